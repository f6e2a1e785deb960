"""The SAE's training defaults, the seed's (miStudioTrain API), written once, in a module free of torch.

engine.trainer.TrainConfig takes its defaults from here, and so does the service, which reads them
when Django starts (the TrainingJob fields, the API serializer and so its schema), where torch must
never be imported (the web process and the queue's parent fork workers).
tests/training/test_defaults.py checks that every place says the same.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class SaeDefaults:
    hidden_dim: int = 1024
    sparsity_coeff: float = 1e-3
    learning_rate: float = 1e-4
    sae_batch_tokens: int = 4096
    max_epochs: int = 50
    min_loss: float = 0.01
    architecture: str = "relu"
    k: int | None = None
    target_l0: float | None = None


SAE_DEFAULTS = SaeDefaults()


@dataclass(frozen=True)
class EvalDefaults:
    """What a run reads after training (engine.run.spec.EvaluationSettings and FeatureSettings,
    the MISTUDIO_EVAL_* and MISTUDIO_ANALYSIS_TOKENS settings): held-out rows the reconstruction metrics read, held-out tokens the next-token loss
    measures (SAELens' n_eval_batches caps its own), and the bytes of float32 [tokens x vocabulary]
    logits alive at once (engine.evaluation.next_token)."""

    max_rows: int = 100_000
    # Each costs about three forwards of the whole model with its LM head (clean, spliced, ablated):
    # 4,096 keep a one-pass run of 10^6 tokens above 85% training (bench/real_sizes.py).
    ce_max_tokens: int = 4_096
    logits_bytes: int = 256 * 2**20
    # The feature analysis after training reads the pass's last this many rows.
    analysis_tokens: int = 100_000


EVAL_DEFAULTS = EvalDefaults()


# The held-out tail's rows at most: enough for a stable estimate, bounded for a 10^9-row cache.
MAX_EVAL_ROWS = 100_000


def eval_rows(n_rows: int, eval_fraction: float) -> int:
    """How many rows the held-out tail has: at least 1 (when asked for), at most MAX_EVAL_ROWS. Here,
    below the trainer, because the disk plan (engine.disk) counts it before any trainer is imported."""
    if eval_fraction <= 0:
        return 0
    return min(max(1, round(n_rows * eval_fraction)), MAX_EVAL_ROWS, n_rows - 1)
