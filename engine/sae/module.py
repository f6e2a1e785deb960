"""The SAE as a torch module: the four weights every architecture shares, with SAELens' names and
shapes (W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out]),

    pre = (x - b_dec) @ W_enc + b_enc,   x_hat = f @ W_dec + b_dec (+ the architecture's skip term),

and its architecture (`kind`, from engine.sae.registry), which takes the code f from the
pre-activations and adds what else it keeps (a threshold, k, W_skip). An SAE reconstructs its
input (d_out = d_in); a transcoder predicts another site from it (d_out its width, and no b_dec
subtracted from the input, which lives in another space: engine.sae.transcoder).

A call gives everything a caller needs at once, as sparsify's SparseCoder does (EleutherAI/sparsify,
sparsify/sparse_coder.py, `forward(x, y=None)`): the SAE is given its input and, when it predicts
another site, its target; the FVU is measured against the target, or against x itself.
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import EngineError
from engine.sae import registry


class ForwardOutput(NamedTuple):
    """One call of the SAE on a batch (sparsify's ForwardOutput, with our names)."""

    output: torch.Tensor  # the prediction of y: x's reconstruction when no target is given
    codes: torch.Tensor | None  # f [rows, d_sae]; None when decoded as a gather of each row's codes
    # The batch's fraction of y's variance left unexplained, sum||y - output||^2 / sum||y - mean y||^2;
    # None when an SAE that predicts another site is given no y.
    fvu: torch.Tensor | None
    pre: torch.Tensor  # the pre-activations, which the sparsity and auxiliary losses read
    fired: torch.Tensor  # [d_sae] bool: the features that fired on some row
    active: torch.Tensor  # [rows]: how many features fired on each row


class SparseAutoencoder(nn.Module):
    def __init__(self, d_in: int, d_sae: int, *, architecture: str = "relu", d_out: int | None = None, **options):
        super().__init__()
        self.kind = registry.get(architecture)
        self.d_in = d_in
        self.d_sae = d_sae
        self.d_out = d_in if d_out is None else int(d_out)
        if self.d_out != d_in and self.kind.apply_b_dec_to_input:
            raise EngineError(f"A {architecture} SAE reconstructs its input: d_out must equal d_in ({d_in}), not {self.d_out}")
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, self.d_out))
        self.b_dec = nn.Parameter(torch.zeros(self.d_out))
        self.kind.setup(self, options)

    @property
    def architecture(self) -> str:
        return self.kind.name

    @property
    def predicts_another_site(self) -> bool:
        """Whether it predicts other rows than its input, given as `y` (Architecture.target_point)."""
        return self.kind.predicts_another_site

    @property
    def unit_norm_decoder(self) -> bool:
        return self.kind.unit_norm_decoder

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return self.kind.activate(self, pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.kind.encode(self, x)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def skip(self, x: torch.Tensor) -> torch.Tensor | None:
        """The architecture's linear term of the input added to the decoded output (a skip
        transcoder's x W_skip^T), or None."""
        return self.kind.skip(self, x)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, *, decode: str = "dense") -> ForwardOutput:
        """The SAE on the batch x, scored against y: what it predicts (an SAE reconstructs x, so y
        defaults to x; an architecture that predicts another site is given that site's rows, row for
        row). `decode` "sparse": for codes with a fixed number of non-zeros a row (the architecture's
        sparse_decode), gather those decoder rows per row (an embedding-bag, forward and backward)
        instead of a [rows, d_sae] @ [d_sae, d_out] matmul; `codes` is then None."""
        pre = self.pre_activations(x)
        if decode == "sparse":
            values, indices = self.kind.sparse_code(self, pre)
            out = F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") + self.b_dec
            codes, active = None, values > 0
            fired = torch.zeros(self.d_sae, dtype=torch.bool, device=x.device)
            fired[indices[active]] = True
        else:
            codes = self.activate(pre)
            out = self.decode(codes)
            active = codes > 0
            fired = active.any(dim=0)
        skip = self.skip(x)
        if skip is not None:
            out = out + skip
        # Without its target, an SAE that predicts another site has nothing to be scored against.
        unscored = y is None and self.predicts_another_site
        return ForwardOutput(out, codes, None if unscored else fvu(x if y is None else y, out), pre, fired,
                             active.sum(dim=1))

    def decoder_norms(self) -> torch.Tensor:
        return self.W_dec.norm(dim=1)

    def weighted_l1(self, f: torch.Tensor) -> torch.Tensor:
        """Mean over tokens of sum_i f_i * ||W_dec,i||.

        Weighting by decoder norms makes the penalty invariant to rescaling a feature (shrinking
        f_i while growing its decoder row no longer lowers the loss), which replaces the unit-norm
        decoder constraint (Anthropic, "Circuits Updates - April 2024").
        """
        return (f * self.decoder_norms()).sum(dim=-1).mean()

    def extra_state_for_export(self) -> dict[str, torch.Tensor]:
        return self.kind.export_tensors(self)

    @torch.no_grad()
    def initialize_(self, sample: torch.Tensor, generator: torch.Generator | None = None, *, b_dec: torch.Tensor | None = None) -> None:
        """Random unit-norm decoder rows, encoder = decoder transpose, b_dec = given centre or data mean.

        Tied initialisation of W_enc as W_dec.T starts every feature as a matched
        detector/writer pair (Anthropic, "Circuits Updates - April 2024"; Gao et al. 2024).
        The trainer passes the geometric median as b_dec (Bricken et al. 2023, "Towards
        Monosemanticity"); the mean is the fallback. A transcoder's encoder reads another space
        than its decoder writes, so its encoder directions are drawn on their own (after the
        decoder's, so an SAE's draws are what they always were); `sample` is then the target's.
        """
        directions = torch.randn(self.d_sae, self.d_out, generator=generator, device="cpu")
        directions /= directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_dec.copy_(directions.to(self.W_dec.device))
        if self.kind.apply_b_dec_to_input:
            self.W_enc.copy_(self.W_dec.T * self.kind.encoder_init_scale)
        else:
            readers = torch.randn(self.d_sae, self.d_in, generator=generator, device="cpu")
            readers /= readers.norm(dim=1, keepdim=True).clamp_min(1e-12)
            self.W_enc.copy_(readers.T.to(self.W_enc.device) * self.kind.encoder_init_scale)
        self.b_enc.zero_()
        centre = b_dec if b_dec is not None else sample.to(torch.float32).mean(dim=0)
        self.b_dec.copy_(centre.to(self.b_dec.device, torch.float32))

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale decoder rows to unit norm (for the constrained-decoder recipe)."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Drop the gradient component parallel to each decoder row.

        With unit-norm decoder rows this keeps Adam from fighting the renormalisation after every
        step (Bricken et al. 2023, "Towards Monosemanticity").
        """
        if self.W_dec.grad is None:
            return
        unit = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        parallel = (self.W_dec.grad * unit).sum(dim=1, keepdim=True)
        self.W_dec.grad -= parallel * unit

    @classmethod
    def from_state_dict(cls, state_dict: dict, **kwargs) -> "SparseAutoencoder":
        """A relu SAE (or `architecture=...`) from a state dict, ignoring keys it does not keep."""
        d_in, d_sae = state_dict["W_enc"].shape
        sae = cls(d_in, d_sae, d_out=state_dict["W_dec"].shape[1], **kwargs)
        names = set(sae.state_dict())
        sae.load_state_dict({k: v.to(torch.float32) for k, v in state_dict.items() if k in names})
        return sae


def fvu(y: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """The fraction of y's variance about its batch mean that the prediction leaves unexplained
    (sparsify's `fvu`); 1 - fvu is the batch's explained variance. A measure, not a loss here (the
    trainer's loss is the MSE: engine.trainer.step), so it takes no gradient."""
    with torch.no_grad():
        y = y.float()
        return ((y - prediction.float()) ** 2).sum() / ((y - y.mean(dim=0)) ** 2).sum()


def build_sae(architecture: str, d_in: int, d_sae: int, **options) -> SparseAutoencoder:
    """A new SAE of a registered architecture; `options` are TrainConfig-named (k=..., ...), and
    d_out for a transcoder."""
    problems = [field.problem(options.get(field.name), architecture)
                for field in registry.get(architecture).request_fields]
    if any(problems):
        raise EngineError("; ".join(p for p in problems if p))
    return SparseAutoencoder(d_in, d_sae, architecture=architecture, **options)


def sae_from_state_dict(state_dict: dict, *, architecture: str | None = None, **options) -> SparseAutoencoder:
    """Rebuild any architecture from its state dict. Without `architecture` it is recognised by
    the keys beyond the four weights (log_threshold: jumprelu, threshold: batchtopk, threshold and
    matryoshka_widths: matryoshka_batchtopk, r_mag and b_mag: gated, none: relu);
    an architecture with another's keys (topk) must be named."""
    if architecture is None:
        extra = frozenset(state_dict) - {"W_enc", "b_enc", "W_dec", "b_dec"}
        matches = [a.name for a in registry.all_architectures() if a.recognized_by_keys and a.state_keys == extra]
        if len(matches) != 1:
            raise EngineError(f"Cannot tell the architecture from the keys {sorted(state_dict)}: name it")
        architecture = matches[0]
    d_in, d_sae = state_dict["W_enc"].shape
    kind = registry.get(architecture)
    options = {**kind.options_in_state(state_dict), **options}
    sae = build_sae(architecture, int(d_in), int(d_sae), d_out=int(state_dict["W_dec"].shape[1]), **options)
    sae.load_state_dict({name: v.to(torch.float32) for name, v in kind.loadable_state(state_dict).items()})
    return sae
