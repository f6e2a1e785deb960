"""A job on a GGUF model: the row keeps the .gguf file as the model's location; the worker converts
it once into MODELS_CACHE_DIR and trains on it; the web side never converts."""
import shutil

import pytest

from corpora.services import corpus_add_from_path
from engine.models.gguf import gguf_identity
from tests.model_fixtures import SAMPLE_CORPUS
from training import services
from training.worker.spec import job_spec
from training.models import TrainingJob
from training.worker.job import job_run

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.slow
def test_a_job_on_a_gguf_in_the_models_dir_converts_it_on_the_worker_and_trains(alice, settings, tiny_gguf_file):
    settings.MODELS_CACHE_DIR = settings.DATA_DIR / "converted"
    (settings.MODELS_DIR / "tiny").mkdir()
    gguf_file = settings.MODELS_DIR / "tiny" / "llama.gguf"
    shutil.copy(tiny_gguf_file, gguf_file)
    corpus_add_from_path(owner=alice, path=SAMPLE_CORPUS)
    request = services.JobRequest(corpus_file=SAMPLE_CORPUS.name, model_name="tiny/llama.gguf", layer_number=1,
                                  hidden_dim=64, max_epochs=2, min_loss=0, max_sequence_length=32)
    job = services.job_create(owner=alice, request=request, enqueue=False)
    assert (job.model_location, job.model_source) == (str(gguf_file.resolve()), "models_dir")
    assert job.model_info["architecture"] == "llama" and job.model_info["is_causal_lm"] is True
    assert not settings.MODELS_CACHE_DIR.exists()

    # The spec as a run builds it once it claimed the job (its writes are fenced by that claim).
    claimed = services.job_claim(job.pk)
    spec = job_spec(claimed, "cpu")
    assert spec.model.gguf_file == gguf_file.resolve() and spec.models_cache_dir == settings.MODELS_CACHE_DIR
    services.job_requeue(claimed, "handed back: the test runs it next", enqueue=False)

    job = job_run(job.id)
    assert job.status == TrainingJob.Status.COMPLETED, job.message
    assert job.evaluation["ce_loss_clean"] is not None
    converted = [p.name for p in settings.MODELS_CACHE_DIR.iterdir() if p.is_dir()]
    assert converted == [gguf_identity(gguf_file)]
