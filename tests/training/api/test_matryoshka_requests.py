"""POST /api/v1/train with architecture matryoshka_batchtopk: matryoshka_widths is checked (a 400
naming the field), completed with hidden_dim or derived from it, and a job trains with it."""
import pytest

from tests.django_fixtures import queued_tasks
from training.models import TrainingJob
from training.tasks import run_training_job

pytestmark = pytest.mark.django_db


def train(client, **fields):
    return client.post("/api/v1/train", {"model_name": "tiny/gpt2", "corpus_file": "reviews.txt", "layer_number": 0,
                                         **fields}, format="json")


@pytest.mark.parametrize("fields,needle", [
    ({"k": 8, "matryoshka_widths": [512, 128]}, "matryoshka_widths: must be strictly increasing, not [512, 128]"),
    ({"k": 8, "matryoshka_widths": [128, 128]}, "matryoshka_widths: must be strictly increasing"),
    ({"k": 8, "matryoshka_widths": [128, 4096]}, "matryoshka_widths: the last width, 4096, is more than hidden_dim (1024)"),
    ({"k": 8, "matryoshka_widths": [0, 128]}, "matryoshka_widths"),
    ({"k": 8, "matryoshka_widths": ["many"]}, "matryoshka_widths"),
    ({"k": 8, "matryoshka_widths": []}, "matryoshka_widths"),
    ({"k": 8, "hidden_dim": 4096, "matryoshka_widths": list(range(8, 8 * 66, 8))},
     "matryoshka_widths: Ensure this field has no more than 64 elements."),
    ({"matryoshka_widths": [128]}, "k: required when architecture is 'matryoshka_batchtopk'"),
])
@pytest.mark.slow
def test_bad_widths_are_a_400_naming_the_field(alice_api, corpus, hub_models, fields, needle):
    response = train(alice_api, architecture="matryoshka_batchtopk", **fields)
    assert response.status_code == 400
    assert needle in response.json()["detail"]
    assert not TrainingJob.objects.exists()


def test_widths_are_refused_for_other_architectures(alice_api, corpus, hub_models):
    response = train(alice_api, architecture="batchtopk", k=8, matryoshka_widths=[128])
    assert response.status_code == 400
    assert "matryoshka_widths: only applies to matryoshka_batchtopk, not 'batchtopk'" in response.json()["detail"]


def test_the_job_records_the_widths_it_will_train_with_hidden_dim_last(alice_api, corpus, hub_models):
    asked = train(alice_api, architecture="matryoshka_batchtopk", k=8, hidden_dim=2048, matryoshka_widths=[128, 512])
    assert asked.status_code == 200, asked.json()
    assert TrainingJob.objects.get(pk=asked.json()["job_id"]).matryoshka_widths == [128, 512, 2048]
    as_text = train(alice_api, architecture="matryoshka_batchtopk", k=8, hidden_dim=2048, matryoshka_widths="64, 256")
    assert TrainingJob.objects.get(pk=as_text.json()["job_id"]).matryoshka_widths == [64, 256, 2048]
    derived = train(alice_api, architecture="matryoshka_batchtopk", k=8, hidden_dim=2048)
    assert TrainingJob.objects.get(pk=derived.json()["job_id"]).matryoshka_widths == [64, 192, 448, 960, 2048]
    other = train(alice_api, architecture="batchtopk", k=8)
    assert TrainingJob.objects.get(pk=other.json()["job_id"]).matryoshka_widths is None


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)  # the worker's task runs the job outside a test transaction
def test_a_matryoshka_job_trains_from_the_api_and_its_result_gives_the_widths(alice_api, alice, client, upload,
                                                                             sample_corpus_bytes, hub_models):
    assert upload("reviews-head.txt", b"\n".join(sample_corpus_bytes.splitlines()[:120])).status_code == 200
    response = train(alice_api, corpus_file="reviews-head.txt", architecture="matryoshka_batchtopk", k=4,
                     matryoshka_widths=[4, 16], hidden_dim=32, max_epochs=1, min_loss=0, max_sequence_length=8,
                     sae_batch_tokens=1024)
    assert response.status_code == 200, response.json()
    [queued] = queued_tasks()
    run_training_job(*queued["args"])  # as the worker runs it
    result = alice_api.get(f"/api/v1/train/{response.json()['job_id']}/result").json()
    assert result["status"] == "completed", result["message"]
    assert (result["architecture"], result["k"], result["matryoshka_widths"]) == ("matryoshka_batchtopk", 4, [4, 16, 32])
    evaluation = result["evaluation"]
    assert list(evaluation["prefix_explained_variance"]) == ["4", "16", "32"]
    assert evaluation["prefix_explained_variance"]["32"] == pytest.approx(evaluation["explained_variance"])
    client.force_login(alice)
    page = client.get(f"/jobs/{response.json()['job_id']}/")
    assert page.status_code == 200 and "4, 16, 32" in page.content.decode()
    ev = evaluation["prefix_explained_variance"]
    assert f"<th>prefix explained variance</th><td>4: {ev['4']:.4g}, 16: {ev['16']:.4g}" in page.content.decode()
