import pytest

from tests.fake_hub import fake_hub  # noqa: F401 - the fixture
from tests.network import outside_network_blocked, unreachable_hub  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db


@pytest.mark.slow
@pytest.mark.parametrize("path", ["tiny/gpt2", "tiny%2Fgpt2"])
def test_check_memory_takes_a_name_with_a_slash_encoded_or_not(alice_api, hub_models, path):
    response = alice_api.get(f"/api/v1/check-memory/{path}")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["model_name"] == "tiny/gpt2"
    check = body["memory_check"]
    assert check["required_gb"] > 0 and check["available_gb"] > 0 and check["sufficient"] is True
    assert body["device"] == "cpu" and body["gpu_compatibility"] == {}
    assert "no NVIDIA GPU" in check["available_on"]
    assert set(body["optimization_suggestions"]) >= {"batch_size", "max_sequence_length", "enable_4bit",
                                                      "enable_checkpointing"}


@pytest.mark.slow
def test_the_estimate_grows_with_the_batch_and_the_dictionary(alice_api, hub_models):
    def required(**query):
        return alice_api.get("/api/v1/check-memory/tiny/llama", query).json()["memory_check"]["required_gb"]

    assert required(batch_size=64) > required(batch_size=1)
    assert required(hidden_dim=65536) > required(hidden_dim=1024)


def test_check_memory_for_an_unknown_model_is_a_400(alice_api, unreachable_hub):
    response = alice_api.get("/api/v1/check-memory/nobody/missing-model-q")
    assert response.status_code == 400
    assert "Could not reach the Hugging Face hub to fetch 'nobody/missing-model-q'" in response.json()["detail"]


@pytest.mark.slow
def test_validate_model_describes_the_bundled_minilm(alice_api):
    body = alice_api.post("/api/v1/validate-model", {"model_name": "sentence-transformers/all-MiniLM-L6-v2"},
                          format="json").json()
    assert body["valid"] is True and body["accessible"] is True and body["requires_token"] is False
    assert body["model_info"]["architecture"] == "bert"
    assert body["model_info"]["total_layers"] == 6 and body["model_info"]["hidden_size"] == 384
    assert 0 < body["memory_requirements"]["minimum_gb"] <= body["memory_requirements"]["recommended_gb"]


def test_validate_model_gives_a_verdict_for_a_model_it_cannot_reach(alice_api, unreachable_hub):
    body = alice_api.post("/api/v1/validate-model", {"model_name": "nobody/missing-model-q",
                                                      "huggingface_token": "hf_secret_abc"}, format="json").json()
    assert body["valid"] is False and body["accessible"] is False
    assert "Could not reach the Hugging Face hub to fetch 'nobody/missing-model-q'" in body["message"]
    assert "hf_secret_abc" not in str(body)


def test_validate_model_needs_a_name(alice_api):
    response = alice_api.post("/api/v1/validate-model", {}, format="json")
    assert response.status_code == 400 and "model_name" in response.json()["detail"]


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_check_memory_refuses_quantization_on_a_host_without_a_gpu_as_train_does(alice_api, upload, hub_models,
                                                                                  sample_corpus_bytes, quantization):
    from engine.devices import gpu_inventory

    if gpu_inventory().gpus:
        pytest.skip("this host has an NVIDIA GPU: 4-bit and 8-bit loading are available")
    response = alice_api.get("/api/v1/check-memory/tiny/gpt2", {"quantization": quantization})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert f"quantization '{quantization}' needs a CUDA GPU" in detail
    upload("reviews.txt", sample_corpus_bytes)
    train = alice_api.post("/api/v1/train", {"model_name": "tiny/gpt2", "corpus_file": "reviews.txt", "layer_number": 0,
                                             "quantization": quantization}, format="json")
    assert (train.status_code, train.json()["detail"]) == (400, detail)
    # Without quantization the same host gets its estimate.
    assert alice_api.get("/api/v1/check-memory/tiny/gpt2", {"quantization": "none"}).status_code == 200


@pytest.mark.slow
def test_a_hub_model_is_counted_from_the_hubs_safetensors_metadata_at_its_commit(alice_api, fake_hub, tiny_gpt2_dir):
    from engine.models.parameter_count import local_safetensors_files, safetensors_header_count

    commit = fake_hub.push_folder("org/tiny-gpt2", tiny_gpt2_dir)
    body = alice_api.post("/api/v1/validate-model", {"model_name": "org/tiny-gpt2"}, format="json").json()
    assert body["valid"] is True, body["message"]
    assert body["model_info"]["parameter_count_from"] == "the hub's safetensors metadata"
    assert body["model_info"]["parameter_count"] == sum(map(safetensors_header_count, local_safetensors_files(tiny_gpt2_dir)))
    assert f"/org/tiny-gpt2/resolve/{commit}/model.safetensors" in fake_hub.file_paths()


@pytest.mark.slow
def test_a_model_once_read_is_not_read_again_by_the_next_job(alice_api, upload, sample_corpus_bytes, hub_models,
                                                            monkeypatch):
    from collections import OrderedDict

    import mistudio.sandbox
    from training.admission import model as modelcheck
    from training.admission import disk as runplan

    assert upload("reviews.txt", sample_corpus_bytes).status_code == 200
    monkeypatch.setattr(modelcheck, "_FACTS", OrderedDict())  # nothing kept from other tests
    monkeypatch.setattr(runplan, "_MEASURED", {})
    children = []
    run_limited = mistudio.sandbox.run_limited
    monkeypatch.setattr(mistudio.sandbox, "run_limited", lambda *args, **kwargs: children.append(args[0]) or
                        run_limited(*args, **kwargs))
    job = {"model_name": "tiny/gpt2", "corpus_file": "reviews.txt", "layer_number": 1, "hidden_dim": 16}
    assert alice_api.post("/api/v1/train", job, format="json").status_code == 200
    assert children == ["engine.models.facts:model_facts", "engine.models.facts:corpus_bytes_per_token"]
    assert alice_api.post("/api/v1/train", job, format="json").status_code == 200
    assert alice_api.get("/api/v1/check-memory/tiny/gpt2").status_code == 200
    assert len(children) == 2  # the model's facts and the corpus's bytes per token were kept from the first
