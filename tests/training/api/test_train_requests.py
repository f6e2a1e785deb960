import time

import pytest

from tests.django_fixtures import queued_tasks
from tests.network import outside_network_blocked, unreachable_hub  # noqa: F401 (fixtures)
from training.models import TrainingJob
from training.api.serializers import TrainRequestSerializer
from training.tasks import run_training_job

pytestmark = pytest.mark.django_db


def train(client, **fields):
    return client.post("/api/v1/train", fields, format="json")


def test_it_queues_a_job_with_the_seed_defaults_and_answers_the_seed_fields(
    alice_api, corpus, hub_models, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = train(alice_api, model_name="tiny/gpt2", corpus_file=corpus, layer_number=1,
                         huggingface_token="hf_sentinel_token_123")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert set(body) == {"job_id", "status", "message", "model_name", "requires_token", "memory_check",
                         "optimizations_applied"}
    assert body["status"] == "queued"
    assert body["job_id"].startswith("train_")
    assert body["memory_check"] == "passed"
    assert "hf_sentinel_token_123" not in response.content.decode()
    job = TrainingJob.objects.get(pk=body["job_id"])
    assert (job.hidden_dim, job.sparsity_coeff, job.learning_rate, job.batch_size, job.max_epochs,
            job.min_loss, job.gpu_id, job.max_sequence_length, job.sae_batch_tokens) == (
        1024, 0.001, 0.0001, 16, 50, 0.01, None, 512, 4096)
    assert job.model_info["total_layers"] == 3 and job.model_info["selected_layer"] == 1
    assert "hf_sentinel_token_123" not in job.encrypted_hf_token
    # Enqueued after commit, with the job id as its only argument.
    [queued] = queued_tasks()
    assert queued["args"] == (job.id,)
    assert queued["func"] == "training.tasks.run_training_job"


def test_an_unknown_corpus_is_a_400_that_says_to_upload(alice_api, hub_models):
    response = train(alice_api, model_name="tiny/gpt2", corpus_file="nonexistent.txt", layer_number=0)
    assert response.status_code == 400
    assert response.json()["detail"] == (
        "Corpus file 'nonexistent.txt' not found. Please upload it with POST /api/v1/upload first."
    )


def test_a_layer_beyond_the_model_is_refused_never_clamped(alice_api, corpus, hub_models):
    response = train(alice_api, model_name="tiny/gpt2", corpus_file=corpus, layer_number=3)
    assert response.status_code == 400
    assert "layer_number 3 is out of range" in response.json()["detail"]
    assert "0 to 2" in response.json()["detail"]
    assert not TrainingJob.objects.exists()


@pytest.mark.parametrize(
    "field,value",
    [("batch_size", 0), ("batch_size", 129), ("hidden_dim", 0), ("learning_rate", 0), ("max_epochs", 0),
     ("layer_number", -1), ("sparsity_coeff", -1), ("max_sequence_length", 0), ("gpu_id", -1),
     ("quantization", "3bit"), ("sae_batch_tokens", 0), ("batch_size", "many")],
)
@pytest.mark.slow
def test_out_of_range_fields_get_a_400_naming_the_field(alice_api, corpus, field, value):
    response = train(alice_api, model_name="tiny/gpt2", corpus_file=corpus, **{field: value})
    assert response.status_code == 400
    body = response.json()
    assert body["detail"].startswith(f"{field}:")
    assert field in body["errors"]


def test_missing_required_fields_are_named(alice_api):
    body = train(alice_api).json()
    assert "model_name" in body["detail"] and "corpus_file" in body["detail"]


def test_a_model_that_cannot_be_found_offline_is_a_prompt_400(alice_api, corpus, unreachable_hub):
    started = time.monotonic()
    response = train(alice_api, model_name="nobody/no-such-model-xyz", corpus_file=corpus)
    assert time.monotonic() - started < 30
    assert response.status_code == 400
    assert "Could not reach the Hugging Face hub to fetch 'nobody/no-such-model-xyz'" in response.json()["detail"]


def test_a_gpu_that_this_server_lacks_is_refused(alice_api, corpus, hub_models):
    response = train(alice_api, model_name="tiny/gpt2", corpus_file=corpus, layer_number=0, gpu_id=0)
    assert response.status_code == 400
    assert "no NVIDIA GPU" in response.json()["detail"]


def test_quantization_without_a_gpu_is_refused(alice_api, corpus, hub_models):
    response = train(alice_api, model_name="tiny/gpt2", corpus_file=corpus, layer_number=0, quantization="4bit")
    assert response.status_code == 400
    assert "needs a CUDA GPU" in response.json()["detail"]


def test_a_non_json_body_is_a_400(alice_api):
    response = alice_api.post("/api/v1/train", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "JSON" in response.json()["detail"]


@pytest.mark.parametrize(
    "fields,needle",
    [
        ({"architecture": "sigmoid"}, "architecture:"),
        ({"architecture": "gated", "k": 8}, "k: only applies to topk, batchtopk"),
        ({"architecture": "topk"}, "k: required when architecture is 'topk'"),
        ({"architecture": "batchtopk"}, "k: required when architecture is 'batchtopk'"),
        ({"architecture": "topk", "k": 2000}, "k: 2000 is more than hidden_dim"),
        ({"architecture": "relu", "k": 8}, "k: only applies to topk, batchtopk"),
        ({"architecture": "topk", "k": 0}, "k:"),
        ({"architecture": "topk", "k": 8, "target_l0": 10}, "target_l0: only applies to relu, jumprelu and gated"),
    ],
)
@pytest.mark.slow
def test_architecture_fields_are_checked(alice_api, corpus, hub_models, fields, needle):
    response = train(alice_api, model_name="tiny/gpt2", corpus_file=corpus, layer_number=0, **fields)
    assert response.status_code == 400
    assert needle in response.json()["detail"]
    assert not TrainingJob.objects.exists()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)  # the worker's task runs the job outside a test transaction
@pytest.mark.parametrize("architecture,k", [("relu", None), ("topk", 8), ("batchtopk", 8), ("jumprelu", None),
                                             ("gated", None)])
def test_each_architecture_trains_from_the_api_and_its_result_says_so(alice_api, upload, sample_corpus_bytes,
                                                                     hub_models, architecture, k):
    # A short corpus keeps the four real jobs to a few seconds each.
    assert upload("reviews-head.txt", b"\n".join(sample_corpus_bytes.splitlines()[:120])).status_code == 200
    fields = {"architecture": architecture, **({"k": k} if k else {})}
    response = train(alice_api, model_name="tiny/gpt2", corpus_file="reviews-head.txt", layer_number=0, hidden_dim=32,
                     max_epochs=1, min_loss=0, max_sequence_length=8, sae_batch_tokens=1024, **fields)
    assert response.status_code == 200, response.json()
    job_id = response.json()["job_id"]
    job = TrainingJob.objects.get(pk=job_id)
    assert (job.architecture, job.k) == (architecture, k)
    [queued] = queued_tasks()
    run_training_job(*queued["args"])  # as the worker runs it

    result = alice_api.get(f"/api/v1/train/{job_id}/result").json()
    assert result["status"] == "completed", result["message"]
    assert (result["architecture"], result["k"]) == (architecture, k)
    evaluation = result["evaluation"]
    for key in ("l0", "explained_variance", "mse", "cosine_similarity", "ce_loss_clean", "ce_loss_with_sae",
                "ce_loss_zero_ablation", "ce_loss_recovered", "kl_div_with_sae", "kl_div_with_ablation", "kl_div_score"):
        assert isinstance(evaluation[key], float), key  # tiny/gpt2 is a causal LM: every metric applies
    assert evaluation["ce_loss_reason"] is None
    assert evaluation["ce_eval_tokens"] > 0  # the predictions measured (MISTUDIO_CE_EVAL_TOKENS caps them)
    assert evaluation["eval_tokens"] > 0 and evaluation["dead_window_tokens"] > 0
    assert 0 <= evaluation["dead_features"] <= 32 and 0 <= evaluation["dense_features"] <= 32
    if architecture == "topk":
        assert evaluation["l0"] <= k + 1e-6
    # Every feature is in one density bin or never fired on the held-out tokens.
    histogram = evaluation["density_histogram"]
    assert len(histogram["counts"]) == len(histogram["bin_edges"]) - 1
    assert sum(histogram["counts"]) + histogram["never_fired"] == 32


def test_a_local_model_path_from_the_network_must_be_inside_the_model_folders(alice_api, corpus, hub_models,
                                                                              tiny_gpt2_dir):
    outside = train(alice_api, model_name=str(tiny_gpt2_dir), corpus_file=corpus, layer_number=0)
    assert outside.status_code == 400
    assert "outside the folders this server loads models from" in outside.json()["detail"]
    inside = train(alice_api, model_name=str(hub_models / "tiny" / "gpt2"), corpus_file=corpus, layer_number=0)
    assert inside.status_code == 200, inside.json()


def test_a_local_path_outside_the_model_folders_gets_one_answer_whether_it_exists_or_not(alice_api, corpus,
                                                                                       hub_models, tmp_path):
    (tmp_path / "empty-dir").mkdir()
    names = ["../../etc", "../../no-such-dir-q", "/etc", str(tmp_path / "empty-dir"), str(tmp_path / "no-such-dir-q"),
             "~/no-such-dir-q"]
    details = {}
    for name in names:
        response = train(alice_api, model_name=name, corpus_file=corpus, layer_number=0)
        assert response.status_code == 400
        details[name] = response.json()["detail"]
    for name, detail in details.items():
        # The same sentence for each, only the name changes: nothing says what is on the disk.
        assert detail == details["../../etc"].replace("'../../etc'", f"'{name}'")
        assert "outside the folders this server loads models from" in detail
    assert not TrainingJob.objects.exists()


def test_a_model_name_too_long_for_the_filesystem_is_a_400(alice_api, corpus):
    response = train(alice_api, model_name="0" * 400, corpus_file=corpus)
    assert response.status_code == 400
    assert "too long" in response.json()["detail"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_an_architecture_registered_in_a_test_module_trains_through_the_api_and_the_worker_task(
        alice_api, upload, sample_corpus_bytes, hub_models):
    """The API's choices, fields and checks, the job row, the worker's run and the export all ask
    the registry: an architecture no module of the service names trains like the built-in ones."""
    from engine import sae as architectures
    from tests.engine.sae.test_toy_architecture import NAME, GainReLU

    architectures.register(GainReLU)
    try:
        assert upload("reviews-head.txt", b"\n".join(sample_corpus_bytes.splitlines()[:60])).status_code == 200
        response = train(alice_api, model_name="tiny/gpt2", corpus_file="reviews-head.txt", layer_number=0,
                         hidden_dim=16, max_epochs=1, min_loss=0, max_sequence_length=8, architecture=NAME)
        assert response.status_code == 200, response.json()
        refused = train(alice_api, model_name="tiny/gpt2", corpus_file="reviews-head.txt", layer_number=0,
                        architecture=NAME, k=4)
        detail = refused.json()["detail"]
        # Every architecture that takes k is named (topk, batchtopk, the transcoders, ...).
        assert detail.startswith("k: only applies to topk, batchtopk, matryoshka_batchtopk") and detail.endswith(", not 'gainrelu_test'.")
        [queued] = queued_tasks()
        run_training_job(*queued["args"])
        result = alice_api.get(f"/api/v1/train/{response.json()['job_id']}/result").json()
        assert result["status"] == "completed", result["message"]
        assert result["architecture"] == NAME
    finally:
        architectures.unregister(NAME)
    assert "gainrelu_test" not in TrainRequestSerializer().fields["architecture"].choices
