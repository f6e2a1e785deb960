"""A training request's defaults, written once: the SAE's are the engine's (engine.defaults, which
TrainConfig reads too), the job's own are here. JobRequest, the TrainingJob fields and the API
serializers (so the OpenAPI schema and `manage.py train` as well) all read DEFAULTS. The values
are the seed's contract; tests/training/test_defaults.py checks that every place says the same."""
from dataclasses import dataclass

from engine.defaults import SaeDefaults
from engine.models.hooks import DEFAULT_HOOK_POINT


@dataclass(frozen=True)
class JobDefaults(SaeDefaults):
    # The job's own: which block's output is kept, and how the corpus goes through the model.
    layer_number: int = 12
    batch_size: int = 16  # sequences per forward pass of the language model
    max_sequence_length: int = 512
    quantization: str = "none"  # TrainingJob.Quantization.NONE
    # Where in the block the SAE reads (engine.models.hooks), and how sequences are made (engine.text.sequences).
    hook_point: str = DEFAULT_HOOK_POINT
    exclude_special_tokens: bool = True
    prepend_bos: bool = True
    # How documents become sequences (engine.text.packing); None: the corpus format's default, which
    # job_create records on the job (training.admission.disk.corpus_facts).
    packing: str | None = None
    training_tokens: int | None = None  # a hard cap on the tokens the SAE trains on; None: max_epochs passes
    cache_activations: str = "auto"  # engine.disk.CACHE_MODES


DEFAULTS = JobDefaults()
