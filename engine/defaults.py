"""A run's defaults, written once, in a module free of torch: the SAE's and how a run reads the model
and corpus (the seed's, miStudioTrain API, and miStudio's request fields), what the service's
settings give every run (RunDefaults) and what the evaluation reads (EvalDefaults).

engine.trainer.TrainConfig and engine.run.RunSpec take their defaults from here, and so does the
service, which reads them when Django starts (the TrainingJob fields, the API serializer and so its
schema, mistudio.settings), where torch must never be imported (the web process and the queue's
parent fork workers). tests/training/test_defaults.py checks that every place says the same.
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
class ReadingDefaults:
    """How a run reads the model and the corpus: the seed's request fields and miStudio's additions.
    engine.run.RunSpec takes its defaults from here, and so does a job (training.defaults)."""

    layer_number: int = 12
    batch_size: int = 16  # sequences per forward pass of the language model
    max_sequence_length: int = 512
    # Where in the block the SAE reads (engine.models.hooks.DEFAULT_HOOK_POINT), and how sequences
    # are made (engine.text.sequences).
    hook_point: str = "resid_post"
    exclude_special_tokens: bool = True
    prepend_bos: bool = True
    # How documents become sequences (engine.text.packing); None: the corpus format's default.
    packing: str | None = None
    training_tokens: int | None = None  # a hard cap on the tokens the SAE trains on; None: max_epochs passes
    cache_activations: str = "auto"  # engine.disk.CACHE_MODES


READING_DEFAULTS = ReadingDefaults()


@dataclass(frozen=True)
class RunDefaults:
    """What the service's settings give every run unless an operator changes them: mistudio.settings
    reads these as the defaults of its MISTUDIO_* variables, and engine.trainer.TrainConfig and
    engine.run.RunSpec default to them, so that a notebook's `run(RunSpec(...))` trains what the
    service would."""

    seed: int = 0
    # The step floor (engine.trainer.plan.min_steps_for): a small corpus still gets this many steps.
    min_steps: int = 1000
    ram_budget_bytes: int = 4 * 1024**3  # activations larger than this stream from their cache
    shuffle_buffer_tokens: int = 65536
    decode_path: str = "auto"
    # bfloat16 on a CPU with hardware bf16 matmuls, float32 elsewhere (engine.devices.cpu_uses_bf16).
    cpu_bf16: str = "auto"
    checkpoint_every_epochs: int = 10
    checkpoint_interval_s: float = 300.0
    progress_interval_s: float = 1.0
    # A hub model's download (engine.models.hub_files.HubLimits).
    hub_timeout_s: float = 10.0
    model_max_bytes: int = 20 * 10**9
    disk_reserve_bytes: int = 1024**3
    # The feature analysis (engine.run.FeatureSettings).
    feature_top_n: int = 20
    feature_context_window: int = 12
    feature_logit_tokens: int = 10


RUN_DEFAULTS = RunDefaults()


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
