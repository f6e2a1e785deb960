"""Exceptions the engine raises for bad input.

Messages say what to fix: the Django side shows them verbatim as HTTP 400 messages.
"""


class EngineError(Exception):
    """Base class for every error the engine raises on purpose."""


class ModelResolutionError(EngineError):
    """The model name could not be turned into a loadable model."""

    def __init__(self, message: str, *, requires_token: bool = False):
        super().__init__(message)
        # True when the model exists but needs a Hugging Face token the caller did not give.
        self.requires_token = requires_token


class ActivationsError(EngineError):
    """An activations file is missing, malformed or holds non-finite values."""


class DeviceError(EngineError):
    """The requested device (GPU index, quantization) is not available on this worker."""


class CorpusError(EngineError):
    """A corpus file has no usable text."""


class ExtractionCancelled(EngineError):
    """`should_stop()` asked activation extraction to stop; no output file was left behind."""


class AnalysisCancelled(EngineError):
    """`should_stop()` asked feature analysis to stop; nothing was saved."""


class TrainingDiverged(EngineError):
    """The loss became NaN or infinite; the message names the epoch and step."""
