"""Transcoder jobs through the API: a request names the architecture and the layer (the hook point
is the MLP's output it predicts), the worker caches the MLP's input and output and trains on the
pairs, and the result scores the MLP's output; what cannot work is a 400 naming the field."""
import json
from pathlib import Path

import pytest

from tests.django_fixtures import queued_tasks
from training.models import TrainingJob
from training.tasks import run_training_job

pytestmark = pytest.mark.django_db


def train(client, **fields):
    return client.post("/api/v1/train", fields, format="json")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)  # the worker's task runs the job outside a test transaction
def test_a_skip_transcoder_trains_from_the_api_and_is_scored_on_the_mlp_output(alice_api, upload, sample_corpus_bytes,
                                                                              hub_models):
    assert upload("reviews-head.txt", b"\n".join(sample_corpus_bytes.splitlines()[:120])).status_code == 200
    response = train(alice_api, model_name="tiny/llama", corpus_file="reviews-head.txt", layer_number=1, hidden_dim=32,
                     architecture="skip_transcoder", k=4, max_epochs=2, min_loss=0, max_sequence_length=8,
                     sae_batch_tokens=256)
    assert response.status_code == 200, response.json()
    job = TrainingJob.objects.get(pk=response.json()["job_id"])
    assert (job.architecture, job.hook_point) == ("skip_transcoder", "mlp_out")
    [queued] = queued_tasks()
    run_training_job(*queued["args"])  # as the worker runs it

    result = alice_api.get(f"/api/v1/train/{job.id}/result").json()
    assert result["status"] == "completed", result["message"]
    evaluation = result["evaluation"]
    assert isinstance(evaluation["explained_variance"], float) and evaluation["l0"] <= 4 + 1e-6
    assert isinstance(evaluation["ce_loss_recovered"], float) and evaluation["ce_loss_reason"] is None
    job.refresh_from_db()
    cfg = json.loads((Path(job.model_path).parent / f"{job.id}_saelens" / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["metadata"]["hook_name"], cfg["metadata"]["hook_name_out"]) == (
        "skip_transcoder", "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")
    assert Path(job.activations_path).with_name(f"{job.id}_targets.npy").is_file()


@pytest.mark.parametrize("fields,field,needle", [
    ({"hook_point": "resid_post"}, "hook_point", "hook_point must be mlp_out (or left out), not 'resid_post'"),
    ({"cache_activations": "never"}, "cache_activations", "transcoders need a cache"),
])
@pytest.mark.slow
def test_a_transcoder_request_that_cannot_work_is_a_400_naming_the_field(alice_api, corpus, hub_models, fields, field,
                                                                         needle):
    response = train(alice_api, model_name="tiny/llama", corpus_file=corpus, layer_number=1, architecture="transcoder",
                     k=4, **fields)
    assert response.status_code == 400
    assert needle in response.json()["detail"] and response.json()["detail"].startswith(field)
    assert not TrainingJob.objects.exists()


def test_a_plain_sae_can_read_the_mlp_input(alice_api, corpus, hub_models):
    response = train(alice_api, model_name="tiny/llama", corpus_file=corpus, layer_number=1, hook_point="mlp_in")
    assert response.status_code == 200, response.json()
    assert TrainingJob.objects.get(pk=response.json()["job_id"]).hook_point == "mlp_in"


def test_a_transcoders_disk_check_counts_both_caches(alice_api, corpus, hub_models):
    common = dict(model_name="tiny/llama", corpus_file=corpus, layer_number=1, k=4, max_epochs=1)
    sae = train(alice_api, architecture="topk", hook_point="mlp_out", cache_activations="always", **common)
    transcoder = train(alice_api, architecture="transcoder", **common)
    assert sae.status_code == transcoder.status_code == 200
    sae_plan = TrainingJob.objects.get(pk=sae.json()["job_id"]).disk_plan
    transcoder_plan = TrainingJob.objects.get(pk=transcoder.json()["job_id"]).disk_plan
    # One pass would stream an SAE's rows under auto; a transcoder always caches, both sites.
    assert transcoder_plan["cache"] is True
    assert transcoder_plan["cache_bytes"] == 2 * sae_plan["cache_bytes"] > 0
