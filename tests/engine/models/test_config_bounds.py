"""A model config is bounded before anything is built from it: every size field and its aliases,
nested sub-configs and per-layer lists; code from the model's repository and vision backbones are
refused; real models' sizes pass."""
import json
import time

import pytest

from engine.models.config_bounds import SIZE_LIMITS, ConfigRefused, check_config
from engine.errors import EngineError
from engine.models.info import describe_model
from engine.models.parameter_count import count_parameters
from engine.models.resolve import load_config, resolve_model

LLAMA_405B = {"model_type": "llama", "num_hidden_layers": 126, "hidden_size": 16384, "intermediate_size": 53248,
              "num_attention_heads": 128, "num_key_value_heads": 8, "vocab_size": 128256,
              "max_position_embeddings": 131072}


def every_field():
    return [(name, limit) for names, limit, _ in SIZE_LIMITS for name in names]


@pytest.mark.parametrize("name,limit", every_field())
def test_each_size_field_is_refused_just_above_its_limit_and_named(name, limit):
    check_config({"model_type": "llama", name: limit}, model_name="org/m")
    with pytest.raises(ConfigRefused) as refused:
        check_config({"model_type": "llama", name: limit + 1}, model_name="org/m")
    assert f"{name} = {limit + 1:,}" in str(refused.value) and f"{name} <= {limit:,}" in str(refused.value)


def test_a_real_large_models_config_passes():
    check_config(LLAMA_405B, model_name="meta-llama/Llama-3.1-405B")
    check_config({"model_type": "gemma3", "text_config": {"vocab_size": 262208, "num_hidden_layers": 62}},
                 model_name="google/gemma-3-27b-it")


def test_a_sub_configs_sizes_are_bounded_too():
    with pytest.raises(ConfigRefused, match=r"text_config\.num_hidden_layers = 2,000,000"):
        check_config({"model_type": "llava", "text_config": {"num_hidden_layers": 2_000_000}}, model_name="org/m")


def test_a_size_given_per_layer_is_bounded_element_by_element():
    with pytest.raises(ConfigRefused, match="num_attention_heads = 5,000"):
        check_config({"model_type": "openelm", "num_attention_heads": [4, 8, 5000]}, model_name="org/m")


def test_a_negative_size_is_refused():
    with pytest.raises(ConfigRefused, match="cannot be negative"):
        check_config({"model_type": "llama", "hidden_size": -64}, model_name="org/m")


def test_a_config_that_is_not_an_object_is_refused():
    with pytest.raises(ConfigRefused, match="not a JSON object"):
        check_config([1, 2], model_name="org/m")


def test_code_from_the_models_repository_is_refused():
    with pytest.raises(ConfigRefused, match="trust_remote_code"):
        check_config({"model_type": "my_own_lm", "auto_map": {"AutoConfig": "configuration_mine.MyConfig"}},
                     model_name="org/m")


def test_an_auto_map_beside_a_model_type_transformers_ships_is_its_own_code():
    # Phi-3's hub config still names its old remote code; transformers runs its own phi3.
    check_config({"model_type": "phi3", "auto_map": {"AutoConfig": "configuration_phi3.Phi3Config"}},
                 model_name="microsoft/Phi-3-mini-4k-instruct")


@pytest.mark.parametrize("field,value", [("use_timm_backbone", True), ("backbone_config", {"model_type": "resnet"}),
                                         ("backbone", "resnet50"), ("use_pretrained_backbone", True)])
def test_a_vision_backbone_is_refused(field, value):
    with pytest.raises(ConfigRefused, match=f"{field} is set"):
        check_config({"model_type": "detr", field: value}, model_name="facebook/detr")


def write_config(folder, config):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return resolve_model(str(folder), models_dir=None)


def test_two_million_layers_are_refused_before_transformers_reads_the_config(tmp_path):
    resolved = write_config(tmp_path / "deep", {**LLAMA_405B, "num_hidden_layers": 2_000_000})
    started = time.monotonic()
    with pytest.raises(ConfigRefused, match="num_hidden_layers"):
        load_config(resolved)
    assert time.monotonic() - started < 10  # building it would take about an hour


def test_a_config_transformers_cannot_build_a_model_from_is_an_engine_error(tmp_path):
    resolved = write_config(tmp_path / "odd", {"model_type": "gpt2", "n_layer": 2, "n_embd": 30, "n_head": 4,
                                               "vocab_size": 100, "bos_token_id": 0, "eos_token_id": 0})
    config = load_config(resolved)
    with pytest.raises(EngineError, match="transformers cannot build a gpt2 model from this config .*divisible"):
        count_parameters(config)
    with pytest.raises(EngineError, match="divisible"):
        describe_model(resolved, config)
