"""What a user asks for, already type-checked: a job (JobRequest) and a sweep (SweepRequest).
Plain dataclasses: the API's serializers, the pages' forms and the management commands build
them; training.services.job_create and training.sweeps.sweep_create check and act on them."""
from dataclasses import dataclass, field, replace

from engine import sae as architectures
from training.defaults import DEFAULTS


def paired_sites(architecture: str) -> architectures.Sites | None:
    """The input and target hook points a job of `architecture` pairs when it predicts another site
    than it reads (a transcoder: the MLP's input and output; engine.sae.registry); None when it
    reconstructs what it reads, or is no architecture (its own check says so). The one place the
    apps ask the registry about a job's sites."""
    if architecture not in architectures.names():
        return None
    kind = architectures.get(architecture)
    return kind.sites(kind.target_point) if kind.predicts_another_site else None


@dataclass
class JobRequest:
    """The seed's TrainingRequest plus miStudio's additions, already type-checked."""

    model_name: str = ""
    corpus_file: str = ""
    activations_file: str = ""
    layer_number: int = DEFAULTS.layer_number
    huggingface_token: str | None = field(default=None, repr=False)  # never shown, logged or kept in plaintext
    hidden_dim: int = DEFAULTS.hidden_dim
    sparsity_coeff: float = DEFAULTS.sparsity_coeff
    learning_rate: float = DEFAULTS.learning_rate
    batch_size: int = DEFAULTS.batch_size
    max_epochs: int = DEFAULTS.max_epochs
    min_loss: float = DEFAULTS.min_loss
    gpu_id: int | None = None
    gpu_ids: list[int] | None = None  # several GPUs of one host training together (DDP)
    max_sequence_length: int = DEFAULTS.max_sequence_length
    sae_batch_tokens: int = DEFAULTS.sae_batch_tokens
    quantization: str = DEFAULTS.quantization
    architecture: str = DEFAULTS.architecture
    k: int | None = DEFAULTS.k
    target_l0: float | None = DEFAULTS.target_l0
    matryoshka_widths: list[int] | None = None  # None: derived from hidden_dim (engine.sae.matryoshka_batchtopk)
    hook_point: str = DEFAULTS.hook_point
    exclude_special_tokens: bool = DEFAULTS.exclude_special_tokens
    prepend_bos: bool = DEFAULTS.prepend_bos
    packing: str | None = DEFAULTS.packing  # None: the corpus format's default
    training_tokens: int | None = DEFAULTS.training_tokens
    cache_activations: str = DEFAULTS.cache_activations
    # Staff only (and manage.py train on the machine: check_force): create the job even though its
    # memory estimate exceeds the device's memory.
    force: bool = False


@dataclass
class SweepRequest:
    """The base of every member (a job request: model, corpus, the shared and the default SAE
    fields), the sites, and each member's overrides, already type-checked."""

    base: JobRequest
    layers: list[int] | None = None  # None: [base.layer_number]
    hook_points: list[str] | None = None  # None: [base.hook_point]
    members: list[dict] = field(default_factory=lambda: [{}])

    def sites(self) -> list[tuple[int, str]]:
        layers = self.layers if self.layers is not None else [self.base.layer_number]
        points = self.hook_points if self.hook_points is not None else [self.base.hook_point]
        return [(layer, point) for layer in layers for point in points]

    def member_requests(self) -> list[tuple[int, str, dict, JobRequest]]:
        """(layer, hook point, overrides, the member's whole request), in the order jobs are made."""
        return [(layer, point, overrides, replace(self.base, layer_number=layer, hook_point=point, **overrides))
                for layer, point in self.sites() for overrides in self.members]
