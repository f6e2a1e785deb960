"""What a run reports while it trains: means since the previous report, throughput and ETA."""
import math
import time

from engine.results import TrainProgress


def _empty() -> dict:
    return {"loss": 0.0, "mse": 0.0, "sparsity": 0.0, "l0": 0.0, "squared_error": 0.0, "squared_deviation": 0.0,
            "tokens": 0}


class Progress:
    def __init__(self, config, total_steps: int, total_tokens: int | None = None):
        self.config = config
        self.total_steps = total_steps
        self.total_tokens = total_tokens  # progress and the ETA follow tokens when known
        self.started_at = time.monotonic()
        self.last_report_at = self.started_at
        self.steps_this_run = 0
        self.tokens_this_run = 0
        self.recent = _empty()  # token-weighted sums (squared error and deviation: plain sums) since the last report
        self.means = {"loss": math.nan, "mse": math.nan, "sparsity": math.nan, "l0": math.nan,
                      "explained_variance": math.nan}

    def add(self, values: dict, *, l0: float, squared_error: float, squared_deviation: float, tokens: int) -> None:
        """One step's numbers: `values` are means per token (loss, mse, sparsity)."""
        recent = self.recent
        for name in ("loss", "mse", "sparsity"):
            recent[name] += values[name] * tokens
        recent["l0"] += l0 * tokens
        recent["squared_error"] += squared_error
        recent["squared_deviation"] += squared_deviation
        recent["tokens"] += tokens
        self.steps_this_run += 1
        self.tokens_this_run += tokens

    def maybe_report(self, on_progress, *, epoch: int, step: int, tokens_done: int | None = None,
                     force: bool = False) -> None:
        now = time.monotonic()
        if on_progress is None or (not force and now - self.last_report_at < self.config.progress_interval_s):
            return
        recent, tokens = self.recent, self.recent["tokens"]
        if tokens:
            deviation = recent["squared_deviation"]
            self.means = {name: recent[name] / tokens for name in ("loss", "mse", "sparsity", "l0")}
            self.means["explained_variance"] = 1.0 - recent["squared_error"] / deviation if deviation > 0 else math.nan
        self.recent = _empty()
        self.last_report_at = now
        elapsed = now - self.started_at
        if self.total_tokens is not None and tokens_done is not None:
            done, left = tokens_done / self.total_tokens, self.total_tokens - tokens_done
            eta = elapsed / self.tokens_this_run * left if self.tokens_this_run else None
        else:
            done = step / self.total_steps
            eta = elapsed / self.steps_this_run * (self.total_steps - step) if self.steps_this_run else None
        on_progress(
            TrainProgress(
                epoch=epoch,
                total_epochs=self.config.max_epochs,
                step=step,
                total_steps=self.total_steps,
                loss=self.means["loss"],
                mse=self.means["mse"],
                l1=self.means["sparsity"],
                progress=min(1.0, done),
                eta_s=eta,
                tokens_per_s=self.tokens_this_run / elapsed if elapsed > 0 else 0.0,
                elapsed_s=elapsed,
                l0=self.means["l0"],
                explained_variance=self.means["explained_variance"],
                tokens_done=tokens_done,
                total_tokens=self.total_tokens,
            )
        )
