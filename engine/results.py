"""What training hands back: progress reports while it runs, checkpoint notices, and the result.
Plain records, shared by the trainer and the data-parallel glue that carries a rank's result to
its worker (engine.distributed)."""

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.sae import SparseAutoencoder


@dataclass
class TrainProgress:
    epoch: int  # 1-based, the epoch in progress
    total_epochs: int
    step: int
    total_steps: int
    loss: float  # means over the steps since the previous report
    mse: float
    l1: float
    progress: float  # 0..1 over all planned steps
    eta_s: float | None
    tokens_per_s: float
    elapsed_s: float
    l0: float = math.nan  # mean active features per token since the previous report
    explained_variance: float = math.nan  # of the training batches since the previous report (scaled inputs)
    tokens_done: int | None = None  # rows trained on so far, over all epochs
    total_tokens: int | None = None  # what the run will train on (its budget, or max_epochs passes)


@dataclass
class CheckpointInfo:
    path: Path
    epoch: int  # completed epochs
    step: int
    # The run's earlier mid-epoch checkpoint this one replaces: deleted once on_checkpoint returns.
    replaced: Path | None = None


@dataclass
class TrainResult:
    sae: SparseAutoencoder  # on the CPU, in the scaled (normalized) input space
    scaling_factor: float
    final_loss: float
    final_mse: float
    total_epochs: int  # completed
    convergence_epoch: int | None
    training_time_seconds: float
    stopped_reason: str  # "max_epochs" | "min_loss" | "training_tokens" (its budget) | "cancelled"
    loss_history: list[float] = field(default_factory=list)  # mean loss per completed epoch
    checkpoints: list[CheckpointInfo] = field(default_factory=list)
    architecture: str = "relu"
    dead_window_tokens: int = 0
    tokens_since_fired: np.ndarray | None = None  # [d_sae] int64; dead where >= dead_window_tokens
    # Rows [start, stop) of the activations held out for evaluation (None when eval_fraction is 0).
    heldout_rows: tuple[int, int] | None = None
    resampled_features: int = 0  # relu: how many dead features were resampled in all
    sae_batch_tokens: int = 0  # tokens per optimizer step actually used (see TrainConfig.min_steps)
    decode_path: str = "dense"  # how the decoder ran: "dense" matmul or "sparse" gather (topk)
    compute_dtype: str = "float32"  # "bfloat16" where the SAE's matmuls ran under bf16 autocast
    tokens_trained: int = 0  # rows stepped on, over all epochs (the training_tokens budget caps it)
    training_rows: int = 0  # rows of one pass (an epoch) that train
    streamed: bool = False  # the rows streamed from the model, no cache (engine.activations.stream)
    # A run with targets (a transcoder's): they were multiplied by this (engine.sae.export folds it in); None without.
    target_scaling_factor: float | None = None
