"""A config.json anyone can publish on the hub is read with bounds: two million layers, a config
transformers rejects, code from the repository and a vision backbone each answer a prompt 400 that
says why (validate-model: a verdict saying so), never a minutes-long build or a 500."""
import json
import time

import pytest

from tests.fake_hub import fake_hub  # noqa: F401 - the fixture
from training.models import TrainingJob

pytestmark = pytest.mark.django_db

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "hidden_size": 64,
         "intermediate_size": 128, "num_attention_heads": 4, "vocab_size": 1000, "max_position_embeddings": 256}
HOSTILE = {
    "org/two-million-layers": ({**LLAMA, "num_hidden_layers": 2_000_000}, "num_hidden_layers <= 1,024"),
    "org/odd-heads": ({"model_type": "gpt2", "n_layer": 2, "n_embd": 30, "n_head": 4, "vocab_size": 1000,
                       "bos_token_id": 0, "eos_token_id": 0}, "divisible"),
    "org/remote-code": ({"model_type": "my_own_lm", "auto_map": {"AutoConfig": "configuration_mine.MyConfig",
                                                                  "AutoModel": "modeling_mine.MyModel"}},
                        "trust_remote_code"),
    "org/backbone": ({"model_type": "detr", "use_timm_backbone": True, "backbone": "resnet50"}, "vision backbone"),
}


@pytest.fixture
def hostile_hub(fake_hub):
    for repo_id, (config, _) in HOSTILE.items():
        fake_hub.push(repo_id, {"config.json": json.dumps(config)})
    return fake_hub


@pytest.mark.slow
@pytest.mark.parametrize("repo_id", HOSTILE)
def test_check_memory_answers_a_prompt_400_that_says_why(alice_api, hostile_hub, repo_id):
    started = time.monotonic()
    response = alice_api.get(f"/api/v1/check-memory/{repo_id}")
    assert time.monotonic() - started < 10  # not the minutes a two-million-layer build takes
    assert response.status_code == 400, response.content
    assert HOSTILE[repo_id][1] in response.json()["detail"]
    assert hostile_hub.file_paths()  # it was the hub's config that was refused


@pytest.mark.slow
@pytest.mark.parametrize("repo_id", HOSTILE)
def test_a_training_request_on_it_is_refused_and_makes_no_job(alice_api, corpus, hostile_hub, repo_id):
    response = alice_api.post("/api/v1/train", {"model_name": repo_id, "corpus_file": corpus, "layer_number": 0},
                              format="json")
    assert response.status_code == 400, response.content
    assert HOSTILE[repo_id][1] in response.json()["detail"]
    assert not TrainingJob.objects.exists()


@pytest.mark.slow
@pytest.mark.parametrize("repo_id", HOSTILE)
def test_validate_model_says_it_cannot_be_used(alice_api, hostile_hub, repo_id):
    response = alice_api.post("/api/v1/validate-model", {"model_name": repo_id}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["valid"] is False
    assert HOSTILE[repo_id][1] in response.json()["message"]


@pytest.fixture
def corpus(upload, sample_corpus_bytes):
    assert upload("reviews.txt", sample_corpus_bytes).status_code == 200
    return "reviews.txt"
