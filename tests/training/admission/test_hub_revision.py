"""A hub model's job trains on the commit that was checked when it was made: the commit the hub
served config.json at is kept on the job, and the worker asks for that commit, even after the
repository has moved on; the result says which commit."""
import json

import pytest

from tests.fake_hub import fake_hub  # noqa: F401 - the fixture
from training import services
from training.documents import result_document
from training.models import TrainingJob
from training.worker.job import job_run

pytestmark = pytest.mark.django_db(transaction=True)


def request(model_name, corpus="reviews.txt"):
    return services.JobRequest(model_name=model_name, corpus_file=corpus, layer_number=1, hidden_dim=32, max_epochs=1,
                               min_loss=0, max_sequence_length=16)


@pytest.mark.slow
def test_the_job_keeps_the_commit_it_was_checked_at_and_the_worker_loads_it(alice, corpus, fake_hub, tiny_gpt2_dir):
    checked = fake_hub.push_folder("org/tiny-gpt2", tiny_gpt2_dir)
    job = services.job_create(owner=alice, request=request("org/tiny-gpt2"), enqueue=False)
    assert job.model_revision == checked and job.model_source == "hub"

    # The repository moves on before a worker takes the job: a different model at "main".
    files = {p.name: p.read_bytes() for p in tiny_gpt2_dir.iterdir() if p.is_file()}
    config = json.loads(files["config.json"])
    moved = fake_hub.push("org/tiny-gpt2", {**files, "config.json": json.dumps({**config, "n_layer": 1})})
    asked_before = len(fake_hub.file_paths())

    job = job_run(job.id)
    assert job.status == TrainingJob.Status.COMPLETED, job.message
    asked = fake_hub.file_paths()[asked_before:]
    assert any(path == f"/org/tiny-gpt2/resolve/{checked}/model.safetensors" for path in asked)
    assert [path for path in asked if f"/resolve/{checked}/" not in path] == []
    assert not any(moved in path for path in asked)
    assert job.model_info["total_layers"] == 3
    assert result_document(job)["model_revision"] == checked


def test_a_local_models_job_has_no_revision(alice, corpus, hub_models):
    job = services.job_create(owner=alice, request=request("tiny/gpt2"), enqueue=False)
    assert job.model_source == "models_dir" and job.model_revision == ""
    assert result_document(job)["model_revision"] is None
