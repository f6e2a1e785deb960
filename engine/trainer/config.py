"""What a training run is asked to do (TrainConfig), and the checks of a config and of the
activations it is given."""
from dataclasses import dataclass

from engine import sae as architectures
from engine.defaults import RUN_DEFAULTS as SERVICE
from engine.defaults import SAE_DEFAULTS as DEFAULT
from engine.devices import CPU_BF16_CHOICES
from engine.errors import ActivationsError, EngineError
from engine.sae import jumprelu


@dataclass
class TrainConfig:
    # The seed's defaults (engine.defaults, which the service's request fields read too).
    hidden_dim: int = DEFAULT.hidden_dim
    sparsity_coeff: float = DEFAULT.sparsity_coeff
    learning_rate: float = DEFAULT.learning_rate
    sae_batch_tokens: int = DEFAULT.sae_batch_tokens
    max_epochs: int = DEFAULT.max_epochs
    # Tokens the SAE trains on in all (SAELens' training_tokens): a hard cap, reached part-way through
    # an epoch or after several; max_epochs still caps the passes. None: max_epochs passes.
    training_tokens: int | None = None
    min_loss: float = DEFAULT.min_loss
    # The service's settings' defaults from here on, where a field has one (engine.defaults.RunDefaults).
    seed: int = SERVICE.seed
    checkpoint_every_epochs: int = SERVICE.checkpoint_every_epochs
    # Checked at the end of each epoch: a checkpoint is written there when this long has passed
    # since the last one (or the run started), besides every checkpoint_every_epochs epochs. A
    # streamed run (engine.trainer.streamed) also checks at each block's start, inside an epoch.
    checkpoint_interval_s: float = SERVICE.checkpoint_interval_s
    progress_interval_s: float = SERVICE.progress_interval_s
    # should_stop() may query a database, so it is called at most this often (and on the first step).
    stop_check_interval_s: float = 0.5
    architecture: str = DEFAULT.architecture  # a registered architecture (engine.sae.names())
    k: int | None = DEFAULT.k  # active features per token, the architectures that take it (engine.sae)
    target_l0: float | None = DEFAULT.target_l0  # jumprelu: penalise (L0/target - 1)^2 instead of L0
    # matryoshka_batchtopk: the nested prefixes' widths; None: doubling groups from hidden_dim / 32
    # (engine.sae.matryoshka_batchtopk.default_widths); hidden_dim is added when the last is smaller.
    matryoshka_widths: list[int] | None = None
    jumprelu_bandwidth: float = jumprelu.BANDWIDTH  # STE rectangle kernel width, in scaled-input units
    jumprelu_initial_threshold: float = jumprelu.INITIAL_THRESHOLD
    lr_warmup_fraction: float = 0.01  # of all steps, linear warm-up from 0
    lr_decay_fraction: float = 0.2  # of all steps, linear decay to 0 at the end
    sparsity_warmup_fraction: float = 0.05  # of all steps, the sparsity penalty ramps from 0
    aux_k_coeff: float = 1 / 32  # topk/batchtopk AuxK loss weight (Gao et al. 2024)
    aux_k: int | None = None  # dead latents AuxK may use per token; default d_in // 2
    dead_window_tokens: int | None = None  # default min(10M, training rows)
    resample_dead: bool = True  # relu: resample features dead for dead_window_tokens
    eval_fraction: float = 0.05  # held-out tail of the rows, at least 1 and at most 100k rows
    # Fewest optimizer steps a run should take; 0 = off. A small corpus at a large sae_batch_tokens
    # gives a handful of steps per epoch, and an SAE barely leaves its initialisation in a hundred
    # Adam steps, so the batch shrinks (sae_batch_tokens is then a maximum) until the run has them.
    # The service's MISTUDIO_MIN_SAE_STEPS, 1000 unless set.
    min_steps: int = SERVICE.min_steps
    # With min_steps on, a run also takes at least min_update_travel / learning_rate steps. An Adam
    # step moves each parameter by about the learning rate, and in the scaled input space (norm
    # sqrt(d_in)) pre-activations are O(1), so the encoder biases a ReLU SAE needs to turn sparse
    # (and JumpReLU's thresholds) must travel ~0.5: at the seed's 1e-4 that is 5,000 steps, where a
    # thousand left the bundled model's relu SAE dense (L0 395 of 1024; docs/architectures.md).
    min_update_travel: float = 0.5
    # Activations larger than this are streamed from their memory-mapped cache instead of loaded
    # into RAM; None loads them whole.
    ram_budget_bytes: int | None = SERVICE.ram_budget_bytes
    # The decoder of an architecture with sparse codes (topk): "auto" times a dense matmul against
    # a sparse gather on the first batch.
    decode_path: str = SERVICE.decode_path
    # CPU precision (engine.devices.cpu_uses_bf16): "on" runs the SAE's matmuls under bf16 autocast
    # (float32 master weights and Adam state, as on a GPU), "auto" does so where the CPU has hardware
    # bf16 (the service's MISTUDIO_CPU_BF16); "off" pins float32.
    cpu_bf16: str = SERVICE.cpu_bf16
    # First epoch over rows in extraction order (first_epoch_rows): rows a shuffle buffer of this
    # many holds; it emits a random half and refills (the scheme of SAELens' mixing buffer). The
    # first step waits for this many rows, which also give the input scale and b_dec's start.
    shuffle_buffer_tokens: int = SERVICE.shuffle_buffer_tokens


DECODE_PATHS = ("dense", "sparse")


def check_config(config: TrainConfig) -> None:
    problems = []
    if config.hidden_dim < 1:
        problems.append("hidden_dim must be at least 1")
    if config.sae_batch_tokens < 1:
        problems.append("sae_batch_tokens must be at least 1")
    if config.max_epochs < 1:
        problems.append("max_epochs must be at least 1")
    if config.training_tokens is not None and config.training_tokens < 1:
        problems.append("training_tokens must be at least 1")
    if not config.learning_rate > 0:
        problems.append("learning_rate must be positive")
    if not config.min_update_travel >= 0:
        problems.append("min_update_travel must be zero or positive")
    if not config.sparsity_coeff >= 0:
        problems.append("sparsity_coeff must be zero or positive")
    problems += architectures.check_config(config)
    if not 0 <= config.eval_fraction < 1:
        problems.append("eval_fraction must be at least 0 and below 1")
    if config.cpu_bf16 not in CPU_BF16_CHOICES:
        problems.append(f"cpu_bf16 must be one of {', '.join(CPU_BF16_CHOICES)}")
    if config.shuffle_buffer_tokens < 2:
        problems.append("shuffle_buffer_tokens must be at least 2")
    if config.dead_window_tokens is not None and config.dead_window_tokens < 1:
        problems.append("dead_window_tokens must be at least 1")
    if config.decode_path not in ("auto", *DECODE_PATHS):
        problems.append(f"decode_path must be auto, {' or '.join(DECODE_PATHS)}")
    elif config.decode_path == "sparse" and config.architecture in architectures.names() and \
            not architectures.get(config.architecture).sparse_decode:
        problems.append(f"decode_path sparse needs codes of a fixed size per token, which {config.architecture} does not have")
    if problems:
        raise EngineError("; ".join(problems))


def check_activations(activations) -> tuple[int, int]:
    shape = tuple(activations.shape)
    if len(shape) != 2 or shape[0] < 2 or shape[1] < 1:
        raise ActivationsError(f"Activations have shape {shape}: expected 2-D [tokens, d_model] with at least 2 tokens")
    return shape
