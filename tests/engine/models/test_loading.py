import pytest
import torch

from engine.errors import DeviceError, EngineError, ModelResolutionError
from engine.models.loading import find_blocks, load_model
from engine.models.resolve import ResolvedModel, resolve_model


def local(directory) -> ResolvedModel:
    return resolve_model(str(directory), models_dir=None)


@pytest.mark.parametrize("fixture, blocks_name", [("tiny_gpt2_dir", "h"), ("tiny_llama_dir", "layers"), ("minilm_dir", "layer")])
def test_it_loads_the_base_model_in_fp32_on_cpu_with_its_blocks(request, fixture, blocks_name):
    loaded = load_model(local(request.getfixturevalue(fixture)), device="cpu")
    assert loaded.dtype == torch.float32
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert not loaded.model.training
    assert len(loaded.blocks) == loaded.config.num_hidden_layers
    assert any(module is loaded.blocks for name, module in loaded.model.named_modules() if name.endswith(blocks_name))
    assert loaded.tokenizer.pad_token is not None


def test_a_tokenizer_without_pad_token_pads_with_eos(tiny_gpt2_dir):
    loaded = load_model(local(tiny_gpt2_dir), device="cpu")
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token


def test_quantization_on_cpu_is_refused(tiny_gpt2_dir):
    with pytest.raises(DeviceError, match="4-bit/8-bit loading needs a CUDA GPU"):
        load_model(local(tiny_gpt2_dir), device="cpu", quantization="4bit")


def test_quantization_without_bitsandbytes_is_refused_naming_the_gpu_extras(tiny_gpt2_dir, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a))
    with pytest.raises(DeviceError, match=r"needs bitsandbytes.*make install GPU=1.*requirements-gpu\.txt"):
        load_model(local(tiny_gpt2_dir), device="cuda:0", quantization="8bit")


def test_a_folder_without_weights_is_a_resolution_error(tiny_gpt2_dir, tmp_path):
    (tmp_path / "config.json").write_text((tiny_gpt2_dir / "config.json").read_text())
    with pytest.raises(ModelResolutionError, match="Could not load model"):
        load_model(local(tmp_path), device="cpu")


def test_a_model_without_a_block_list_is_unsupported():
    from transformers import GPT2Config

    with pytest.raises(EngineError, match="Could not find the 3 transformer blocks"):
        find_blocks(torch.nn.Linear(2, 2), GPT2Config(n_layer=3))
