"""The SAE's training defaults, the seed's (miStudioTrain API), in a module free of torch.

engine.trainer.TrainConfig starts from the same values. They stand here as well because
engine.trainer imports torch and the service reads its defaults when Django starts (the
TrainingJob fields, the API serializer and so its schema), where torch must never be imported
(the web process and the queue's parent fork workers). tests/training/test_defaults.py keeps
TrainConfig and every field of the service equal to these.
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
