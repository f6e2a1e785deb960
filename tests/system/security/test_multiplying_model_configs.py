"""Configs whose fields multiply the layers a model builds (ALBERT's layers per group, Switch
Transformers' experts in every layer), and a forged GGUF header, from the hub and from the models
folder: the web process parses none of them (a limited child does, engine.models.facts) and builds
no model at their size, so each request is answered at once (validate-model: its verdict; the
others: their answer or a 400 that says why) while this process's memory stays where it was."""
import json
import struct

import pytest

from tests.fake_hub import fake_hub  # noqa: F401 - the fixture
from training.models import TrainingJob

pytestmark = pytest.mark.django_db

ALBERT = {"model_type": "albert", "architectures": ["AlbertForMaskedLM"], "num_hidden_layers": 8, "hidden_size": 8,
          "embedding_size": 8, "intermediate_size": 8, "num_attention_heads": 2, "vocab_size": 100,
          "max_position_embeddings": 64, "num_hidden_groups": 1}
SWITCH = {"model_type": "switch_transformers", "architectures": ["SwitchTransformersForConditionalGeneration"],
          "d_model": 8, "d_ff": 8, "d_kv": 4, "num_heads": 2, "vocab_size": 100, "expert_capacity": 4,
          "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1}
# The old web process built every one of these layers on the meta device, twice: 24,000 ALBERT
# layers took 24 s; a million, 40 minutes and 40 GB.
ACCEPTED = {  # within every bound: described from a one-layer copy, its parameters extrapolated
    "org/albert-1000-inner-layers": {**ALBERT, "inner_group_num": 1000},
    "org/switch-2048-experts": {**SWITCH, "num_layers": 24, "num_decoder_layers": 24, "num_sparse_encoder_layers": 12,
                                "num_sparse_decoder_layers": 12, "num_experts": 2048},
}
REFUSED = {  # (config, what the 400 says)
    "org/albert-3000-inner-layers": ({**ALBERT, "inner_group_num": 3000}, "inner_group_num <= 1,024"),
    "org/albert-million-inner-layers": ({**ALBERT, "inner_group_num": 1_000_000}, "inner_group_num <= 1,024"),
    # Each field within its own bound (1,024 layers, 4,096 experts): four million expert MLPs.
    "org/switch-layers-times-experts": ({**SWITCH, "num_layers": 1024, "num_decoder_layers": 1024,
                                         "num_sparse_encoder_layers": 1024, "num_sparse_decoder_layers": 1024,
                                         "num_experts": 4096}, "multiplies its layers to 4,194,304"),
}
# What the test process may grow by while answering, past what answering about a one-layer ALBERT
# took (the modules a first request imports): a child's torch and model are not in it.
MEMORY_GROWTH_BYTES = 100 << 20


def peak_memory_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


@pytest.fixture(params=["hub", "models_folder"])
def place(request, settings):
    """Puts a config where a name finds it: on the fake hub, or in the models folder."""
    if request.param == "hub":
        hub = request.getfixturevalue("fake_hub")
        # Weights the worker would download (a job on a repository without any is refused), in a
        # format whose tensors cannot be read without loading it: the count is extrapolated.
        return lambda name, config: hub.push(name, {"config.json": json.dumps(config), "pytorch_model.bin": b"\0" * 16})

    def in_folder(name, config):
        folder = settings.MODELS_DIR / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(config))
    return in_folder


@pytest.fixture
def warm(alice_api, corpus, place):
    """Every request answered once for a model of one layer: what importing and caching take."""
    place("org/albert-one-layer", {**ALBERT, "num_hidden_layers": 1})
    for response in ask_all(alice_api, "org/albert-one-layer", corpus):
        assert response.status_code == 200, response.content
    TrainingJob.objects.all().delete()


def ask_all(client, name, corpus):
    validate = client.post("/api/v1/validate-model", {"model_name": name}, format="json")
    memory = client.get(f"/api/v1/check-memory/{name}")
    train = client.post("/api/v1/train", {"model_name": name, "corpus_file": corpus, "layer_number": 0,
                                          "hidden_dim": 16}, format="json")
    return validate, memory, train


@pytest.mark.slow
@pytest.mark.parametrize("name", ACCEPTED)
def test_a_config_within_bounds_is_described_from_one_layer_at_once(alice_api, corpus, place, warm, name):
    place(name, ACCEPTED[name])
    before = peak_memory_bytes()
    validate, memory, train = ask_all(alice_api, name, corpus)
    assert peak_memory_bytes() - before < MEMORY_GROWTH_BYTES

    assert validate.status_code == 200, validate.content
    body = validate.json()
    assert body["valid"] is True, body["message"]
    info = body["model_info"]
    assert info["total_layers"] == (8 if "albert" in name else 24)
    assert info["parameter_count_from"].startswith("extrapolated")  # no weights: nothing else to read
    assert "resid_post" in info["hook_points"]
    if "albert" in name:
        # Every one of the 1,000 layers of the group counts: each has q, k, v and o maps of 8 x 8.
        assert info["parameter_count"] > 1000 * 4 * 8 * 8
    else:
        # 12 sparse layers of 2,048 experts in each stack, each expert two maps of 8 x 8.
        assert info["parameter_count"] > 2 * 12 * 2048 * 2 * 8 * 8
    assert memory.status_code == 200, memory.content
    assert memory.json()["parameter_count"] == info["parameter_count"]
    assert train.status_code == 200, train.content
    assert TrainingJob.objects.get().model_info["parameter_count"] == info["parameter_count"]


@pytest.mark.slow
@pytest.mark.parametrize("name", REFUSED)
def test_a_config_that_multiplies_its_layers_past_the_bounds_is_refused_at_once(alice_api, corpus, place, warm,
                                                                                name):
    config, why = REFUSED[name]
    place(name, config)
    before = peak_memory_bytes()
    validate, memory, train = ask_all(alice_api, name, corpus)
    assert peak_memory_bytes() - before < MEMORY_GROWTH_BYTES

    assert validate.status_code == 200 and validate.json()["valid"] is False
    assert why in validate.json()["message"]
    for response in (memory, train):
        assert response.status_code == 400, response.content
        assert why in response.json()["detail"]
    assert not TrainingJob.objects.exists()


def forged_gguf(path, *, array_length: int):
    """A GGUF header whose one metadata array says it holds `array_length` strings."""
    def text(value: str) -> bytes:
        return struct.pack("<Q", len(value)) + value.encode()

    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 2)
    header += text("general.architecture") + struct.pack("<I", 8) + text("llama")  # 8: a string
    # 9: an array, of 8: strings, with its length, and nothing after it.
    header += text("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, array_length) + text("a") * 4
    path.write_bytes(header)


@pytest.mark.slow
@pytest.mark.parametrize("place", ["models_folder"], indirect=True)
def test_a_forged_gguf_header_is_a_verdict_and_a_400_and_this_process_lives(alice_api, settings, corpus, place, warm):
    folder = settings.MODELS_DIR / "org" / "forged"
    folder.mkdir(parents=True)
    forged_gguf(folder / "model.gguf", array_length=2**63 - 1)
    before = peak_memory_bytes()
    validate = alice_api.post("/api/v1/validate-model", {"model_name": "org/forged"}, format="json")
    memory = alice_api.get("/api/v1/check-memory/org/forged")
    assert peak_memory_bytes() - before < MEMORY_GROWTH_BYTES

    assert validate.status_code == 200 and validate.json()["valid"] is False
    assert "Could not read the GGUF metadata of 'model.gguf'" in validate.json()["message"]
    assert memory.status_code == 400, memory.content
    assert "Could not read the GGUF metadata of 'model.gguf'" in memory.json()["detail"]
