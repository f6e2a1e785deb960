"""The check-memory document: the memory a run of a model needs with the given sizes, per GPU, and
the disk a run on a corpus needs. GET /api/v1/check-memory answers it and the New job page shows it
before a job is made; neither creates a job."""
from corpora.selectors import corpus_for_user
from mistudio.errors import ServiceError
from training.admission import model as modelcheck
from training.admission import disk as runplan

# What decides the disk a run needs (its passes and cache) beside the sizes the memory check reads.
DISK_FIELDS = ("packing", "training_tokens", "max_epochs", "cache_activations")


def check_memory_report(*, user, model_name: str, corpus_file: str = "", **query) -> dict:
    """`query`: CheckMemoryQuerySerializer's validated data but corpus_file, the user's corpus to
    estimate the disk for (none: the disk check says there is nothing to estimate)."""
    params = dict(query)
    disk = {name: params.pop(name) for name in DISK_FIELDS}
    corpus = corpus_for_user(user=user, name=corpus_file) if corpus_file else None
    # What /train would refuse (4-bit or 8-bit with no CUDA GPU) is refused here too, not estimated.
    modelcheck.check_gpu_request(None, params["quantization"])
    described = modelcheck.describe(model_name)
    total = described.info.total_layers
    if params["layer_number"] is None:
        params["layer_number"] = total // 2
    elif params["layer_number"] >= total:
        raise ServiceError(f"layer_number {params['layer_number']} is out of range: {model_name} has {total} layers.",
                           field="layer_number")
    report = modelcheck.memory_report(described, **params)
    report["disk_check"] = runplan.disk_report(corpus=corpus, described=described, hidden_dim=params["hidden_dim"],
                                               max_sequence_length=params["max_sequence_length"], **disk)
    return report
