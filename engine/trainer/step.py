"""One optimizer step of a run: the SAE's call on the batch and its optional target (dense, or a
sparse gather for codes of a fixed size: engine.sae.module), the losses from what it returns, the
update, the dead-feature counters, and the architecture's hooks (engine.sae)."""
import math
import time

import torch
import torch.nn.functional as F

from engine.devices import cpu_uses_bf16
from engine.errors import TrainingDiverged
from engine.trainer.config import DECODE_PATHS
from engine.trainer.parallel import TrainingForward, reduce_batch
from engine.trainer.progress import Progress
from engine.trainer import target_l0
from engine.trainer.schedules import lr_factor, sparsity_warmup

_GRAD_CLIP_NORM = 1.0


class Run:
    """One call of train_sae: the optimisation step and what it counts. An architecture's hooks get
    this as `trainer`: config, dead_mask(), optimizer, parallel, state and total_steps."""

    def __init__(self, *, config, sae, optimizer, state, device, total_steps, dead_window_tokens, batch_tokens,
                 parallel=None, total_tokens=None):
        self.config = config
        self.sae = sae
        self.kind = sae.kind
        self.optimizer = optimizer
        self.state = state
        self.device = device
        self.total_steps = total_steps
        self.dead_window_tokens = int(dead_window_tokens)
        self.batch_tokens = batch_tokens
        self.on_cuda = str(device).startswith("cuda")
        # bf16 autocast: matmuls in bf16, weights and Adam state stay fp32 (master weights).
        self.autocast_device = "cuda" if self.on_cuda else "cpu"
        self.autocast = self.on_cuda or cpu_uses_bf16(config.cpu_bf16)
        self.decode_timings_s = {}
        self.progress = Progress(config, total_steps, total_tokens)
        self.parallel = parallel
        self.steers_l0 = target_l0.active(self.kind, config)
        # Gradients are averaged over ranks only for what runs inside DistributedDataParallel's forward.
        self.ddp = parallel.wrap(TrainingForward(sae, self._forward)) if parallel is not None else None
        self.stop_wanted = False  # this rank's should_stop said so
        self.stop_agreed = False  # some rank's did, as of the last step: every rank stops

    @property
    def started_at(self) -> float:
        return self.progress.started_at

    def dead_mask(self) -> torch.Tensor:
        return self.state.tokens_since_fired >= self.dead_window_tokens

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """One update on the batch x, scored against y: the rows the SAE predicts when they are not
        x itself (its targets, row for row; engine.sae.module.SparseAutoencoder.forward)."""
        target = x if y is None else y
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(self.config, self.state.step, self.total_steps)
        if self.state.decode_path is None:
            self.state.decode_path = self._choose_decode_path(x, y)
            if self.parallel is not None:
                # Timings differ between processes; every rank decodes the way rank 0 chose.
                self.state.decode_path = self.parallel.broadcast_choice(self.state.decode_path, DECODE_PATHS)
        forward = self._forward if self.ddp is None else self.ddp
        out = forward(x, y, self.state.decode_path)
        recon, fired = out.output, out.fired
        losses = self._losses(target, out)
        with torch.no_grad():
            l0 = out.active.float().mean()
        # Distributed: the whole batch's numbers, reduced before backward so every rank sees the same loss.
        totals = None
        if self.parallel is not None:
            totals = reduce_batch(self.parallel, target, recon, l0, fired, losses, stop_wanted=self.stop_wanted)
            self.stop_agreed = totals.stop
        self._check_finite(losses["loss"] if totals is None else totals.losses["loss"])
        self._update(losses["loss"])
        n = x.shape[0] if totals is None else totals.tokens
        with torch.no_grad():
            counters = self.state.tokens_since_fired
            counters += n
            counters[fired if totals is None else totals.fired] = 0
        self.kind.after_step(self.sae, target, recon, self)
        if totals is None:
            with torch.no_grad():
                squared_error = ((target - recon) ** 2).sum().item()
                squared_deviation = ((target - target.mean(dim=0)) ** 2).sum().item()
            values = {name: value.item() for name, value in losses.items()}
            l0 = l0.item()
        else:
            values, l0 = totals.losses, totals.l0
            squared_error, squared_deviation = totals.squared_error, totals.squared_deviation
        sums = self.state.epoch_sums
        for name in ("loss", "mse", "sparsity"):
            sums[name] += values[name] * n
        sums["tokens"] += n
        if self.steers_l0:
            # Every rank has the same (reduced) L0, so every rank steers the same way.
            warming_up = sparsity_warmup(self.config, self.state.step, self.total_steps) < 1.0
            target_l0.update(self.state, l0, target=self.config.target_l0,
                             learning_rate=self.config.learning_rate, warming_up=warming_up,
                             steps_left=self.total_steps - self.state.step)
        self.progress.add(values, l0=l0, squared_error=squared_error, squared_deviation=squared_deviation, tokens=n)
        self.state.step += 1

    def _losses(self, x, out) -> dict:
        """loss = MSE (mean over elements) + weight x warm-up x the architecture's sparsity term,
        + its auxiliary loss (AuxK) + its further reconstruction losses (Matryoshka's prefixes), by name,
        from the SAE's call `out` (engine.sae.module.ForwardOutput). `x` is what it predicts (the
        batch itself, or its targets). The weight's multiplier is 1 unless target_l0 steers it."""
        pre, f, recon = out.pre, out.codes, out.output
        mse = F.mse_loss(recon, x)
        sparsity = self.kind.sparsity_loss(self.sae, pre, f, self.config)
        warmup = sparsity_warmup(self.config, self.state.step, self.total_steps)
        loss = mse + self.state.sparsity_weight * self.state.sparsity_multiplier * warmup * sparsity
        aux = self.kind.aux_loss(self.sae, x, recon, pre, self)
        if aux is not None:
            loss = loss + aux
        further = self.kind.reconstruction_losses(self.sae, x, f)
        for value in further.values():
            loss = loss + value
        return {"loss": loss, "mse": mse, "sparsity": sparsity, **further}

    def _check_finite(self, loss) -> None:
        value = loss.item() if isinstance(loss, torch.Tensor) else loss
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"The loss became {value} at epoch {self.state.epochs_done + 1}, step {self.state.step + 1}: "
                f"lower learning_rate (now {self.config.learning_rate:g}) or sparsity_coeff, and check the "
                "activations for extreme values."
            )

    def _update(self, loss) -> None:
        sae = self.sae
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if sae.unit_norm_decoder:
            sae.remove_parallel_grad_()
        # Clipping keeps the occasional outlier batch from knocking Adam's moments off (April 2024 update).
        torch.nn.utils.clip_grad_norm_(sae.parameters(), _GRAD_CLIP_NORM)
        self.optimizer.step()
        if sae.unit_norm_decoder:
            sae.normalize_decoder_()

    def _forward(self, x: torch.Tensor, y: torch.Tensor | None, path: str):
        """The SAE's call on the batch (engine.sae.module.ForwardOutput) in bf16 autocast where the
        run uses it, its tensors back in float32 for the losses."""
        with torch.autocast(self.autocast_device, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.sae(x, y, decode=path)
        return out._replace(output=out.output.float(), pre=out.pre.float(),
                            codes=None if out.codes is None else out.codes.float())

    def _choose_decode_path(self, x: torch.Tensor, y: torch.Tensor | None) -> str:
        """Sparse decoding pays off only when d_sae is large against k and the device's gather is
        quick: time both on the first batch (forward and backward, no update) and keep the faster."""
        if self.config.decode_path != "auto":
            return self.config.decode_path
        if not self.kind.sparse_decode:
            return "dense"
        timings = {}
        for path in ("dense", "sparse", "dense", "sparse"):  # the first of each warms up
            started = time.perf_counter()
            F.mse_loss(self._forward(x, y, path).output, x if y is None else y).backward()
            if self.on_cuda:
                torch.cuda.synchronize()
            timings[path] = time.perf_counter() - started
            self.optimizer.zero_grad(set_to_none=True)
        self.decode_timings_s = timings
        return min(timings, key=timings.get)
