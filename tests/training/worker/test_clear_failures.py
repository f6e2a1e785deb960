"""A job that cannot finish fails with a message that says what happened and what to change."""
import shutil

import pytest

from corpora.services import corpus_add_from_path
from tests.model_fixtures import SAMPLE_CORPUS
from training import services
from training.worker.job import job_run

pytestmark = pytest.mark.django_db(transaction=True)


def run(owner, **fields):
    if not owner.corpora.exists():
        corpus_add_from_path(owner=owner, path=SAMPLE_CORPUS)
    job = services.job_create(owner=owner, request=services.JobRequest(corpus_file=SAMPLE_CORPUS.name, **fields),
                              enqueue=False)
    return job_run(job.id)


@pytest.mark.slow
def test_a_diverging_loss_fails_naming_the_epoch_and_step(alice, hub_models):
    # The API caps learning_rate at 1; the service takes what the engine is given.
    job = run(alice, model_name="tiny/gpt2", layer_number=0, hidden_dim=32, max_epochs=5, min_loss=0,
              max_sequence_length=16, learning_rate=1e12)
    assert job.status == "failed", job.message
    assert "at epoch" in job.message and "step" in job.message and "lower learning_rate" in job.message


@pytest.mark.slow
def test_running_out_of_memory_says_what_was_needed_and_what_to_change(alice, hub_models, monkeypatch):
    import torch

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    # Where both extraction paths run the model (a job trains while it extracts, in another thread).
    monkeypatch.setattr("engine.activations.extract.capture_batches", exhausted)
    corpus_add_from_path(owner=alice, path=SAMPLE_CORPUS)
    request = services.JobRequest(corpus_file=SAMPLE_CORPUS.name, model_name="tiny/gpt2", layer_number=0, hidden_dim=32,
                                  max_epochs=1)
    created = services.job_create(owner=alice, request=request, enqueue=False)

    def resolved_again(*args, **kwargs):
        raise AssertionError("the worker resolved the client's model name again")

    # The worker works from the model the job recorded when it was checked (the estimate too).
    monkeypatch.setattr("engine.models.resolve.resolve_model", resolved_again)
    job = job_run(created.id)
    assert job.status == "failed"
    assert "Out of memory during extracting activations" in job.message
    assert "Estimated requirement:" in job.message and "available of" in job.message
    assert "lower batch_size (now 16)" in job.message and "'4bit'" in job.message


@pytest.mark.slow
def test_an_unreadable_model_says_what_to_check(alice, hub_models, settings):
    broken = settings.MODELS_DIR / "tiny" / "broken"
    shutil.copytree(hub_models / "tiny" / "gpt2", broken)
    corpus_add_from_path(owner=alice, path=SAMPLE_CORPUS)
    request = services.JobRequest(corpus_file=SAMPLE_CORPUS.name, model_name="tiny/broken", layer_number=0,
                                  hidden_dim=32, max_epochs=1)
    job = services.job_create(owner=alice, request=request, enqueue=False)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    # Damaged before a job is made: its header is read for the parameter count, and refused.
    with pytest.raises(services.ServiceError, match="model.safetensors.*safetensors header"):
        services.job_create(owner=alice, request=request, enqueue=False)
    # Damaged after (a disk error, a copy replaced while the job waited): the worker says what to check.
    job = job_run(job.id)
    assert job.status == "failed"
    assert "Could not load model 'tiny/broken'" in job.message
    assert "weights and tokenizer files" in job.message
