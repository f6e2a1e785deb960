"""A training request's defaults, written once: the SAE's and how a run reads the model and corpus
are the engine's (engine.defaults, which TrainConfig and RunSpec read too), the job's own are here.
JobRequest, the TrainingJob fields and the API serializers (so the OpenAPI schema and `manage.py
train` as well) all read DEFAULTS. The values are the seed's contract; tests/training/test_defaults.py
checks that every place says the same."""
from dataclasses import dataclass

from engine.defaults import ReadingDefaults, SaeDefaults


@dataclass(frozen=True)
class JobDefaults(SaeDefaults, ReadingDefaults):
    # The job's own: the model's weights as loaded (RunSpec.quantization None is this "none").
    quantization: str = "none"  # TrainingJob.Quantization.NONE


DEFAULTS = JobDefaults()
