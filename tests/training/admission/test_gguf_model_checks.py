"""validate-model and check-memory on GGUF models: the bundled SmolLM2 and a user's .gguf in the
models folder, described from their metadata (the web process never dequantizes one)."""
import shutil

import pytest

from engine.models.resolve import BUNDLED_CAUSAL_LM_NAME
from tests.model_fixtures import write_tiny_gguf

pytestmark = pytest.mark.django_db

SMOLLM2_PARAMETERS = 134_515_008  # the tensors of its GGUF header, and of the converted model
GB = 1024**3


@pytest.fixture
def gguf_in_models_dir(settings, tiny_gguf_file):
    folder = settings.MODELS_DIR / "tiny" / "llama-gguf"
    folder.mkdir(parents=True)
    shutil.copy(tiny_gguf_file, folder / "tiny-llama.gguf")
    return folder / "tiny-llama.gguf"


@pytest.mark.slow
def test_validate_model_describes_the_bundled_smollm2(alice_api):
    body = alice_api.post("/api/v1/validate-model", {"model_name": BUNDLED_CAUSAL_LM_NAME}, format="json").json()
    assert body["valid"] is True and body["accessible"] is True and body["requires_token"] is False
    info = body["model_info"]
    assert (info["architecture"], info["total_layers"], info["hidden_size"], info["vocab_size"]) == ("llama", 30, 576, 49152)
    assert info["is_causal_lm"] is True and info["source"] == "bundled"
    assert info["parameter_count"] == SMOLLM2_PARAMETERS
    assert body["message"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf (bundled)")


@pytest.mark.slow
def test_check_memory_estimates_smollm2_dequantized_in_the_compute_dtype(alice_api, settings):
    body = alice_api.get(f"/api/v1/check-memory/{BUNDLED_CAUSAL_LM_NAME}", {"batch_size": 1}).json()
    assert body["parameter_count"] == SMOLLM2_PARAMETERS
    # The Q4_1 file is 98 MB; the model a worker computes with holds fp32 weights on this suite's
    # CPU (MISTUDIO_CPU_BF16=off), bf16 on a GPU.
    weight_bytes = 4 if body["device"] == "cpu" else 2
    assert body["memory_check"]["breakdown_gb"]["model_weights"] == round(SMOLLM2_PARAMETERS * weight_bytes / GB, 3)


@pytest.mark.slow
def test_a_gguf_in_the_models_dir_is_validated_without_converting_it(alice_api, settings, gguf_in_models_dir):
    settings.MODELS_CACHE_DIR = settings.DATA_DIR / "converted"
    for name in ("tiny/llama-gguf", "tiny/llama-gguf/tiny-llama.gguf"):
        body = alice_api.post("/api/v1/validate-model", {"model_name": name}, format="json").json()
        assert body["valid"] is True, body["message"]
        assert body["model_info"]["source"] == "models_dir" and body["model_info"]["total_layers"] == 2
        assert alice_api.get(f"/api/v1/check-memory/{name}").status_code == 200
    assert not settings.MODELS_CACHE_DIR.exists()
    assert sorted(p.name for p in gguf_in_models_dir.parent.iterdir()) == ["tiny-llama.gguf"]


def test_a_folder_of_several_ggufs_is_a_400_that_asks_for_one(alice_api, settings, gguf_in_models_dir):
    shutil.copy(gguf_in_models_dir, gguf_in_models_dir.with_name("tiny-llama.Q8_0.gguf"))
    response = alice_api.get("/api/v1/check-memory/tiny/llama-gguf")
    assert response.status_code == 400
    assert "holds 2 GGUF files" in response.json()["detail"] and "name the one to load" in response.json()["detail"]


@pytest.mark.slow
def test_a_gguf_transformers_cannot_load_is_a_400_that_says_so(alice_api, settings):
    (settings.MODELS_DIR / "tiny").mkdir()
    write_tiny_gguf(settings.MODELS_DIR / "tiny" / "command-r.gguf", architecture="command-r")
    response = alice_api.get("/api/v1/check-memory/tiny/command-r.gguf")
    assert response.status_code == 400
    assert "'command-r' model, which the installed transformers" in response.json()["detail"]
    body = alice_api.post("/api/v1/validate-model", {"model_name": "tiny/command-r.gguf"}, format="json").json()
    assert body["valid"] is False and "cannot load from GGUF" in body["message"]


def test_a_gguf_outside_the_model_folders_is_refused(alice_api, tiny_gguf_file):
    body = alice_api.post("/api/v1/validate-model", {"model_name": str(tiny_gguf_file)}, format="json").json()
    assert body["valid"] is False and body["accessible"] is False
    assert "outside the folders this server loads models from" in body["message"]
