"""What one run is given and what it hands back: the spec, the callbacks and the outcome. Plain
records: a worker builds them from a job row, a notebook by hand."""
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.activations.extract import ExtractionResult
from engine.defaults import EVAL_DEFAULTS, READING_DEFAULTS, RUN_DEFAULTS
from engine.models.hub_files import HubLimits
from engine.models.resolve import ResolvedModel
from engine.results import CheckpointInfo, TrainProgress, TrainResult
from engine.trainer import TrainConfig

# The phases a run goes through, in order (on_phase names them).
LOADING, EXTRACTING, TRAINING, EVALUATING, ANALYZING = "loading", "extracting", "training", "evaluating", "analyzing"


@dataclass
class RunPaths:
    """Where a run writes. Checkpoints go to checkpoint_dir (engine.trainer.checkpoint.file_name)."""

    activations: Path  # the extracted .npy; its token index and arrival order go beside it
    model: Path  # the SAE's state dict, input scale folded in (engine.sae.export.save_sae)
    metadata: Path
    saelens_dir: Path
    features_dir: Path
    checkpoint_dir: Path
    # The target site's rows, when the run's sites are paired (engine.run.sources.run_sites): row for
    # row with `activations`.
    targets: Path | None = None

    @classmethod
    def in_folder(cls, folder: Path, name: str = "sae") -> "RunPaths":
        """Every file of a run in one folder, named after `name`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return cls(activations=folder / f"{name}_activations.npy", model=folder / f"{name}_sae.pt",
                   metadata=folder / f"{name}_metadata.json", saelens_dir=folder / f"{name}_saelens",
                   features_dir=folder / f"{name}_features", checkpoint_dir=folder,
                   targets=folder / f"{name}_targets.npy")


@dataclass
class FeatureSettings:
    """The feature analysis (engine.evaluation.features): top contexts per feature, tokens either side of
    each, and the tokens each feature promotes and suppresses most."""

    top_n: int = RUN_DEFAULTS.feature_top_n
    window: int = RUN_DEFAULTS.feature_context_window
    logit_tokens: int = RUN_DEFAULTS.feature_logit_tokens
    # The analysis reads the pass's last this many rows (engine.run.final_rows; None: every row):
    # the time it takes after training, and what a streamed run computes with the model again.
    max_tokens: int | None = EVAL_DEFAULTS.analysis_tokens


@dataclass
class EvaluationSettings:
    """The evaluation after training (engine.run.evaluation): what it reads and how much memory its
    next-token metrics take."""

    # Held-out rows the reconstruction metrics read at most (the first of the held-out tail); a
    # streamed run computes them with the model again. None: the whole tail.
    max_rows: int | None = EVAL_DEFAULTS.max_rows
    # Held-out tokens the next-token loss and KL are measured on at most (engine.evaluation.next_token), as
    # SAELens' n_eval_batches caps its own; `ce_eval_tokens` reports how many were.
    ce_max_tokens: int = EVAL_DEFAULTS.ce_max_tokens
    # The [tokens x vocabulary] float32 logits alive at once (engine.evaluation.next_token.logits_chunk_tokens).
    logits_bytes: int = EVAL_DEFAULTS.logits_bytes


@dataclass
class RunSpec:
    """One SAE trained on one layer of a model over a corpus, or on a file of activations.

    Give `model` (a ResolvedModel, or a name engine.models.resolve.resolve_model finds offline first)
    with `corpus`, or `activations_file` alone. `config.seed` seeds the extraction's batch order as
    well as training.

    Every default is the service's (engine.defaults: the seed's request fields, and what the service's
    settings give a run unless an operator changes them, MISTUDIO_MIN_SAE_STEPS's step floor among
    them), so a spec with only `paths`, `model`, `corpus` and `layer_number` trains what a job with
    the same fields would. What differs, by design: `token=None` lets huggingface_hub send the
    Hugging Face login saved on this machine (HF_TOKEN, ~/.cache/huggingface/token), which is what a
    notebook wants, where the service sends a job its owner's token or none (MISTUDIO_HUB_USE_SERVER_LOGIN
    off; pass token=False for that); `device` is the CPU unless given, where a worker takes its GPU;
    and the folders are the caller's (without `models_cache_dir` a GGUF model is dequantized at each
    load instead of converted once)."""

    paths: RunPaths
    config: TrainConfig = field(default_factory=TrainConfig)
    model: ResolvedModel | str | None = None
    corpus: Path | None = None  # a corpus file or dataset folder (engine.text.corpus)
    text_field: str = "text"  # the column holding the text, for the dataset formats
    packing: str | None = READING_DEFAULTS.packing  # engine.text.packing.PACKINGS; None: the corpus format's default
    # Tokens the SAE trains on (a hard cap; max_epochs still caps the passes); None: max_epochs passes.
    training_tokens: int | None = READING_DEFAULTS.training_tokens
    cache_activations: str = READING_DEFAULTS.cache_activations  # engine.disk.CACHE_MODES
    # The most disk the run may write (its cache and checkpoints), below the data folder's free space; None: the free space.
    disk_budget_bytes: int | None = None
    activations_file: Path | None = None  # .npy or .safetensors [tokens, d_model]: no model, no extraction
    # The rows an SAE that predicts another site predicts, trained from files: [tokens, d_out], row
    # for row with activations_file (a transcoder's: the MLP's output).
    targets_file: Path | None = None
    layer_number: int = READING_DEFAULTS.layer_number  # 0-based block the SAE reads at
    # Where in block layer_number (engine.models.hooks): "resid_post" (its output), "resid_pre" (its
    # input), "mlp_out", "attn_out", "mlp_in". An architecture that predicts another site predicts
    # this point, its target_point, from its input_point (engine.run.sources.run_sites; a transcoder:
    # mlp_out from mlp_in). The next two: engine.text.sequences. All three are ignored for an
    # activations_file (its metadata records them as absent).
    hook_point: str = READING_DEFAULTS.hook_point
    exclude_special_tokens: bool = READING_DEFAULTS.exclude_special_tokens
    prepend_bos: bool = READING_DEFAULTS.prepend_bos
    max_sequence_length: int = READING_DEFAULTS.max_sequence_length
    batch_size: int = READING_DEFAULTS.batch_size  # sequences per forward pass of the model
    quantization: str | None = None  # "8bit" | "4bit" (CUDA only)
    # A Hugging Face token, never shown; False sends none, None the login saved on this machine
    # (engine.models.resolve), unlike the service (see the class's docstring).
    token: str | bool | None = field(default=None, repr=False)
    device: str = "cpu"
    # The model's weights on the CPU (engine.models.loading.load_model): the service's MISTUDIO_CPU_BF16.
    cpu_bf16: str = RUN_DEFAULTS.cpu_bf16
    models_cache_dir: Path | None = None  # where a GGUF model is converted once (engine.models.gguf)
    # A hub model's download: its sizes checked first, its reads timed out (engine.models.loading.load_model);
    # the service's MISTUDIO_HUB_TIMEOUT_S, MISTUDIO_MODEL_MAX_BYTES and MISTUDIO_DISK_RESERVE_BYTES unless given.
    hub_limits: HubLimits | None = field(default_factory=lambda: HubLimits(
        timeout_s=RUN_DEFAULTS.hub_timeout_s, max_bytes=RUN_DEFAULTS.model_max_bytes,
        reserve_bytes=RUN_DEFAULTS.disk_reserve_bytes))
    checkpoint_prefix: str = "sae"
    resume_from: Path | None = None  # a checkpoint of an earlier run of this spec
    # Activations an earlier run of this spec extracted completely: used instead of extracting again.
    cache: Path | None = None
    # The first epoch follows the order extraction writes rows in (a shuffle buffer; engine.trainer).
    # A fresh run that trains in this process then trains while it extracts; a run from the
    # finished cache, or a resume, repeats that order.
    first_epoch_in_arrival_order: bool = False
    features: FeatureSettings = field(default_factory=FeatureSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    # What the metadata file names: the run (a job's id), the model as described when asked for
    # (engine.models.info.describe_model; read from the model's config when None) and the corpus
    # (its file's name when None).
    run_id: str | None = None
    model_info: dict | None = None
    corpus_name: str | None = None


@dataclass
class RunCallbacks:
    """What a run tells its caller, all optional. They run in the caller's thread (an overlapped
    extraction reports from inside the trainer's waits), so they may use a database connection."""

    # A phase begins (LOADING ... ANALYZING), with details: device (loading, extracting),
    # overlapped and resume_from (training).
    on_phase: Callable[..., None] | None = None
    on_extraction_progress: Callable[[int, int, int], None] | None = None  # sequences done, of, tokens
    on_cache_complete: Callable[[ExtractionResult], None] | None = None  # the finished file is in place
    on_train_progress: Callable[[TrainProgress], None] | None = None
    on_checkpoint: Callable[[CheckpointInfo], None] | None = None
    on_analysis_progress: Callable[[int, int], None] | None = None  # rows done, of
    # The run failed in this phase (while extraction and training run at once, the one that failed).
    on_error: Callable[[str, BaseException], None] | None = None
    # Asked between steps; True cancels the run (training keeps a checkpoint).
    should_stop: Callable[[], bool] | None = None
    # What the caller adds to the training stats of the outcome and the metadata (a service: what
    # every run of a job spent). Called once training ended, with its result.
    extra_training_stats: Callable[[TrainResult], dict] | None = None


@dataclass
class RunOutcome:
    """How a run ended. `cancelled_in` is None for a completed run, else "extraction" (nothing
    trained), "training" (checkpoints kept; `result` is None when the training step handed none
    back), "analysis" (everything but the feature analysis is written) or, for a sweep's member
    (engine.run.sweep), "waiting" (cancelled before its turn: nothing trained)."""

    paths: RunPaths
    cancelled_in: str | None = None
    result: TrainResult | None = None
    activations_path: Path | None = None  # what training read; None when no complete file is left
    extraction: ExtractionResult | None = None  # when this run extracted
    evaluation: dict | None = None
    training_stats: dict | None = None
    exports: dict[str, Path] = field(default_factory=dict)  # {"saelens": folder}
    features_dir: Path | None = None
    features: dict | None = None  # what the feature analysis did, and why not where it did not
    metadata: dict | None = None

    @property
    def status(self) -> str:
        return "completed" if self.cancelled_in is None else "cancelled"
