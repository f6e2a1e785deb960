"""A model's parameters from its files' metadata (safetensors headers, a sharded folder's shards, a
GGUF's tensor table), else extrapolated from builds of one and two layers and experts: each equal
to what building the whole model on the meta device counts, which is never done."""
import json
import shutil
import struct

import pytest
from transformers import AutoConfig

from engine.models.config_bounds import ConfigRefused, check_config
from engine.errors import EngineError
from engine.models.hooks import available_hook_points_for_config
from engine.models.facts import model_facts
from engine.models.parameter_count import _meta_count, count_parameters, parameter_count, safetensors_header_count
from engine.models.resolve import BUNDLED_CAUSAL_LM_NAME, load_config, resolve_model

SMOLLM2_PARAMETERS = 134_515_008
# Tiny configs of the families whose layer and expert fields differ: each extrapolated count is
# compared with the whole model built on the meta device.
FAMILIES = {
    "llama": dict(num_hidden_layers=5, hidden_size=64, intermediate_size=128, num_attention_heads=4, vocab_size=1000),
    "gpt2": dict(n_layer=4, n_embd=32, n_head=2, vocab_size=500, bos_token_id=0, eos_token_id=0),
    "albert": dict(num_hidden_layers=4, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                   num_hidden_groups=2, inner_group_num=3, embedding_size=16, vocab_size=300),
    "switch_transformers": dict(num_layers=4, num_decoder_layers=4, num_sparse_encoder_layers=2,
                                num_sparse_decoder_layers=2, num_experts=4, d_model=32, d_ff=64, d_kv=8, num_heads=2,
                                vocab_size=300),
    "mixtral": dict(num_hidden_layers=3, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                    num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, vocab_size=300),
    "gemma3_text": dict(num_hidden_layers=7, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=16, vocab_size=300),
    "t5": dict(num_layers=3, num_decoder_layers=2, d_model=32, d_ff=64, d_kv=8, num_heads=2, vocab_size=300),
    "nllb-moe": dict(encoder_layers=4, decoder_layers=4, num_experts=4, d_model=32, encoder_ffn_dim=64,
                     decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2, vocab_size=300,
                     encoder_sparse_step=2, decoder_sparse_step=2),
}


@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir", "tiny_neox_dir", "minilm_dir"])
def test_the_safetensors_headers_count_what_building_the_model_counts(request, tmp_path, fixture):
    folder = request.getfixturevalue(fixture)
    resolved = resolve_model(str(folder), models_dir=tmp_path)
    config = load_config(resolved)
    assert parameter_count(resolved, config) == (_meta_count(config), "the safetensors headers")


def test_a_sharded_folder_is_counted_from_the_shards_its_index_names(tiny_llama_dir, tmp_path):
    from transformers import AutoModel

    AutoModel.from_pretrained(tiny_llama_dir).save_pretrained(tmp_path / "sharded", max_shard_size="500KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    resolved = resolve_model(str(tmp_path / "sharded"), models_dir=None)
    config = load_config(resolved)
    assert parameter_count(resolved, config) == (_meta_count(config), "the safetensors headers")


@pytest.mark.slow
def test_the_bundled_smollm2_is_counted_from_its_gguf_tensor_table(smollm2_gguf):
    resolved = resolve_model(BUNDLED_CAUSAL_LM_NAME, models_dir=None)
    config = load_config(resolved)
    assert parameter_count(resolved, config) == (SMOLLM2_PARAMETERS, "the GGUF file's tensor table")
    assert _meta_count(config) == SMOLLM2_PARAMETERS


def test_a_folder_of_its_config_alone_is_extrapolated_to_what_building_it_counts(tiny_llama_dir, tmp_path):
    (tmp_path / "config-only").mkdir()
    shutil.copy(tiny_llama_dir / "config.json", tmp_path / "config-only" / "config.json")
    resolved = resolve_model(str(tmp_path / "config-only"), models_dir=None)
    config = load_config(resolved)
    count, counted_from = parameter_count(resolved, config)
    assert count == _meta_count(config) and counted_from.startswith("extrapolated")


@pytest.mark.parametrize("model_type", FAMILIES)
def test_the_extrapolation_equals_the_whole_build_across_families(model_type):
    config = AutoConfig.for_model(model_type, **FAMILIES[model_type])
    assert count_parameters(config) == _meta_count(config)


def test_a_safetensors_header_longer_than_the_limit_is_refused_unread(tmp_path):
    file = tmp_path / "forged.safetensors"
    file.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    with pytest.raises(EngineError, match="safetensors header is 1,152,921,504,606,846,976 bytes"):
        safetensors_header_count(file)


def test_a_safetensors_header_with_a_forged_shape_is_refused(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 0]}}).encode()
    file = tmp_path / "forged.safetensors"
    file.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(EngineError, match="no valid shape"):
        safetensors_header_count(file)


def test_hook_points_are_read_from_one_layer_whatever_the_depth(tiny_llama_dir):
    config = AutoConfig.from_pretrained(tiny_llama_dir)
    shallow = available_hook_points_for_config(config)
    # A thousand layers of 4,096: minutes and gigabytes to build whole, milliseconds for one.
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = 1000, 4096, 16384
    config.num_attention_heads = config.num_key_value_heads = 32
    assert available_hook_points_for_config(config) == shallow


def test_layers_times_experts_past_the_bound_is_refused_though_each_field_is_within_its_own():
    config = {"model_type": "switch_transformers", "num_layers": 1024, "num_decoder_layers": 1024, "num_experts": 4096}
    with pytest.raises(ConfigRefused, match=r"multiplies its layers to 4,194,304 \(num_layers 1,024 x num_experts"):
        check_config(config, model_name="org/switch")
    check_config({**config, "num_layers": 15, "num_decoder_layers": 15, "num_experts": 2048}, model_name="switch-c")


def test_the_facts_a_child_answers_are_plain_json(tiny_gpt2_dir):
    model = {"name": "tiny", "location": str(tiny_gpt2_dir), "source": "local", "revision": None}
    facts = model_facts(model, token=False, hub={"endpoint": "", "cache": "", "offline": True, "timeout_s": 1})
    assert json.loads(json.dumps(facts)) == facts
    assert facts["sizes"] == {"num_layers": 3, "hidden_size": 32, "vocab_size": 50257, "intermediate_size": None,
                              "num_attention_heads": 2}
    assert (facts["architecture"], facts["is_causal_lm"]) == ("gpt2", True)
    assert facts["parameter_count_from"] == "the safetensors headers"
    assert facts["hook_points"] == ["resid_post", "resid_pre", "mlp_out", "attn_out", "mlp_in"]
