"""A job's hook point and special-token settings through the API: the defaults, a point the model
has, one it lacks or that does not exist (a 400 that lists the choices), and the job's documents."""
import shutil

import pytest

from training import services
from training.models import TrainingJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def mamba(settings, tiny_mamba_dir):
    """A model whose blocks have neither an attention nor an MLP (engine.models.hooks finds neither)."""
    shutil.copytree(tiny_mamba_dir, settings.MODELS_DIR / "tiny" / "mamba")
    return "tiny/mamba"


def train(client, **fields):
    return client.post("/api/v1/train", fields, format="json")


def test_a_job_reads_the_block_output_without_special_tokens_after_a_bos_by_default(alice_api, corpus, hub_models):
    response = train(alice_api, model_name="tiny/gpt2", corpus_file=corpus, layer_number=1)
    assert response.status_code == 200, response.json()
    job = TrainingJob.objects.get(pk=response.json()["job_id"])
    assert (job.hook_point, job.exclude_special_tokens, job.prepend_bos) == ("resid_post", True, True)
    assert alice_api.get(f"/api/v1/train/{job.id}/status").json()["hook_point"] == "resid_post"


@pytest.mark.slow
def test_a_job_takes_a_hook_point_the_model_has_and_the_special_token_switches(alice_api, corpus, hub_models):
    response = train(alice_api, model_name="tiny/llama", corpus_file=corpus, layer_number=1, hook_point="mlp_out",
                     exclude_special_tokens=False, prepend_bos=False)
    assert response.status_code == 200, response.json()
    job = TrainingJob.objects.get(pk=response.json()["job_id"])
    assert (job.hook_point, job.exclude_special_tokens, job.prepend_bos) == ("mlp_out", False, False)


@pytest.mark.slow
def test_a_hook_point_the_model_lacks_is_a_400_that_lists_those_it_has(alice_api, corpus, mamba):
    response = train(alice_api, model_name=mamba, corpus_file=corpus, layer_number=0, hook_point="attn_out")
    assert response.status_code == 400
    assert response.json()["detail"] == (
        "hook_point 'attn_out': tiny/mamba has no attn_out that can be found; its hook points are resid_post, resid_pre."
    )
    assert not TrainingJob.objects.exists()
    assert train(alice_api, model_name=mamba, corpus_file=corpus, layer_number=0, hook_point="resid_pre").status_code == 200


def test_an_unknown_hook_point_is_a_400_that_lists_the_valid_names(alice_api, corpus, hub_models):
    response = train(alice_api, model_name="tiny/gpt2", corpus_file=corpus, layer_number=1, hook_point="resid_mid")
    assert response.status_code == 400
    assert response.json()["detail"] == (
        'hook_point: "resid_mid" is not a hook point: choose one of resid_post, resid_pre, mlp_out, attn_out, mlp_in.'
    )


@pytest.mark.slow
def test_validate_model_lists_the_hook_points_a_model_has(alice_api, hub_models, mamba):
    body = alice_api.post("/api/v1/validate-model", {"model_name": "tiny/gpt2"}, format="json").json()
    assert body["model_info"]["hook_points"] == ["resid_post", "resid_pre", "mlp_out", "attn_out", "mlp_in"]
    body = alice_api.post("/api/v1/validate-model", {"model_name": mamba}, format="json").json()
    assert body["model_info"]["hook_points"] == ["resid_post", "resid_pre"]


def test_the_job_row_becomes_the_runs_spec_and_its_result_shows_the_fields(alice_api, corpus, hub_models):
    from training.documents import result_document
    from training.worker.spec import job_spec

    response = train(alice_api, model_name="tiny/gpt2", corpus_file=corpus, layer_number=2, hook_point="attn_out",
                     prepend_bos=False)
    job = services.job_claim(response.json()["job_id"])  # a run's spec, as the worker builds it once it claimed the job
    spec = job_spec(job, "cpu")
    assert (spec.layer_number, spec.hook_point, spec.exclude_special_tokens, spec.prepend_bos) == (2, "attn_out", True, False)
    document = result_document(job)
    assert (document["hook_point"], document["exclude_special_tokens"], document["prepend_bos"]) == ("attn_out", True, False)


def test_a_job_on_an_activations_file_records_no_hook_point(alice, tmp_path):
    import numpy as np

    from training.documents import result_document
    from training.worker.spec import job_spec

    path = tmp_path / "acts.npy"
    np.save(path, np.zeros((16, 4), np.float32))
    job = services.job_create(owner=alice, request=services.JobRequest(activations_file=str(path), hook_point="mlp_out"),
                              enqueue=False)
    assert (job.hook_point, job.exclude_special_tokens, job.prepend_bos) == ("", None, None)
    document = result_document(job)
    assert (document["hook_point"], document["exclude_special_tokens"], document["prepend_bos"]) == (None, None, None)
    assert job_spec(job, "cpu").activations_file == path


def test_the_job_page_shows_the_hook_point_and_special_token_settings(client, alice):
    job = TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2", hook_point="attn_out", prepend_bos=False)
    client.force_login(alice)
    page = client.get(f"/jobs/{job.id}/").content.decode()
    assert "Hook point" in page and "attn_out" in page
    assert "Special tokens excluded" in page and "BOS prepended (causal LMs)" in page



def test_the_status_shows_the_special_token_switches_as_asked(alice_api, corpus, hub_models):
    asked = train(alice_api, model_name="tiny/gpt2", corpus_file=corpus, layer_number=1,
                  exclude_special_tokens=False, prepend_bos=False)
    assert asked.status_code == 200, asked.json()
    status = alice_api.get(f"/api/v1/train/{asked.json()['job_id']}/status").json()
    assert (status["exclude_special_tokens"], status["prepend_bos"]) == (False, False)
    default = train(alice_api, model_name="tiny/gpt2", corpus_file=corpus, layer_number=1)
    status = alice_api.get(f"/api/v1/train/{default.json()['job_id']}/status").json()
    assert (status["exclude_special_tokens"], status["prepend_bos"]) == (True, True)


@pytest.mark.slow
def test_the_status_schema_names_the_special_token_switches():
    from drf_spectacular.generators import SchemaGenerator

    status = SchemaGenerator().get_schema(request=None, public=True)["components"]["schemas"]["Status"]["properties"]
    assert status["exclude_special_tokens"]["type"] == status["prepend_bos"]["type"] == "boolean"
