"""Hook points: the rows extracted at each point are what the model's own modules output, found by
the blocks' structure on every family transformers ships, and the CE evaluation splices at the
same point."""
import numpy as np
import pytest
import torch

from engine.activations.extract import extract_activations
from engine.errors import EngineError
from engine.models.hooks import HOOK_POINTS, available_hook_points, available_hook_points_for_config, register_writer
from engine.evaluation.next_token import ce_loss_evaluation
from engine.models.loading import load_model
from engine.models.resolve import resolve_model

MAX_LEN = 20
LAYER = 1
CAUSAL = ["tiny_gpt2_dir", "tiny_llama_dir", "tiny_neox_dir"]

# Where each family keeps block L's attention and MLP output, written out here by hand (the engine
# finds them by structure): BERT is post-LN, so its points are the output projections before the
# residual add and LayerNorm.
MODULES = {
    "gpt2": lambda m, L: {"attn_out": m.h[L].attn, "mlp_out": m.h[L].mlp},
    "llama": lambda m, L: {"attn_out": m.layers[L].self_attn, "mlp_out": m.layers[L].mlp},
    "gpt_neox": lambda m, L: {"attn_out": m.layers[L].attention, "mlp_out": m.layers[L].mlp},
    "bert": lambda m, L: {"attn_out": m.encoder.layer[L].attention.output.dense, "mlp_out": m.encoder.layer[L].output.dense},
}
# mlp_in is the input of these (the MLP, or BERT's first half of it), after the norm before it.
MLP_INPUT_MODULES = {
    "gpt2": lambda m, L: m.h[L].mlp,
    "llama": lambda m, L: m.layers[L].mlp,
    "gpt_neox": lambda m, L: m.layers[L].mlp,
    "bert": lambda m, L: m.encoder.layer[L].intermediate,
}


def load(model_dir, **kwargs):
    return load_model(resolve_model(str(model_dir), models_dir=None), device="cpu", **kwargs)


@pytest.fixture(scope="module", params=[*CAUSAL, "minilm_dir"])
def loaded(request):
    return load(request.getfixturevalue(request.param))


def model_input(loaded, text):
    """The token ids extraction gives the model with prepend_bos and exclude_special_tokens off."""
    if loaded.config.model_type == "bert":
        return loaded.tokenizer(text, truncation=True, max_length=MAX_LEN)["input_ids"]
    return loaded.tokenizer(text, add_special_tokens=False)["input_ids"][:MAX_LEN]


def reference(loaded, texts, hook_point):
    """Each text alone through the model, its point read from the model's own outputs:
    hidden_states[L] enters block L, hidden_states[L + 1] leaves it (L is not the last block, whose
    hidden_states entry some models give after the final norm); the sublayers by forward hooks."""
    rows = []
    base = getattr(loaded.model, "base_model", loaded.model)
    modules = MODULES[loaded.config.model_type](base, LAYER)
    with torch.inference_mode():
        for text in texts:
            seen = {}

            def keep(name):
                def hook(_module, _inputs, out):
                    seen[name] = out[0] if isinstance(out, tuple) else out
                return hook

            handles = [module.register_forward_hook(keep(name)) for name, module in modules.items()]
            mlp_input = MLP_INPUT_MODULES[loaded.config.model_type](base, LAYER)
            handles.append(mlp_input.register_forward_pre_hook(lambda _m, args: seen.__setitem__("mlp_in", args[0])))
            try:
                out = loaded.model(input_ids=torch.tensor([model_input(loaded, text)]), output_hidden_states=True)
            finally:
                for handle in handles:
                    handle.remove()
            seen["resid_pre"], seen["resid_post"] = out.hidden_states[LAYER], out.hidden_states[LAYER + 1]
            rows.append(seen[hook_point][0].numpy())
    return np.concatenate(rows)


def extract(loaded, texts, hook_point, out_path, **options):
    values = dict(layer_number=LAYER, batch_size=4, max_sequence_length=MAX_LEN, out_path=out_path,
                  hook_point=hook_point, prepend_bos=False, exclude_special_tokens=False)
    values.update(options)
    result = extract_activations(loaded, texts, **values)
    return result, np.load(result.path).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("hook_point", HOOK_POINTS)
def test_each_hook_point_extracts_what_the_models_own_module_outputs(loaded, sample_texts, tmp_path, hook_point):
    texts = sample_texts[:10]
    result, rows = extract(loaded, texts, hook_point, tmp_path / "acts.npy")
    expected = reference(loaded, texts, hook_point)
    assert result.hook_point == hook_point and rows.shape == expected.shape
    # float16 rows: float16 rounding (rel. 2^-11) on top of a small absolute tolerance.
    np.testing.assert_allclose(rows, expected, atol=1e-4, rtol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("model", [*CAUSAL, "tiny_gemma2_dir"])
def test_the_attention_and_mlp_outputs_are_what_the_block_adds_to_its_input(model, sample_texts, tmp_path, request):
    # resid_post = resid_pre + attn_out + mlp_out in a pre-norm block, sequential or parallel
    # (GPT-NeoX), and in Gemma 2 only if attn_out and mlp_out are read after its post-sublayer norms.
    loaded = load(request.getfixturevalue(model))
    texts = sample_texts[:10]
    rows = {point: extract(loaded, texts, point, tmp_path / f"{point}.npy")[1] for point in HOOK_POINTS}
    added = rows["resid_pre"] + rows["attn_out"] + rows["mlp_out"]
    scale = np.abs(rows["resid_post"]).max()
    np.testing.assert_allclose(added, rows["resid_post"], atol=4e-3 * scale)
    assert np.abs(rows["mlp_out"]).max() > 1e-2 * scale and np.abs(rows["attn_out"]).max() > 1e-2 * scale


def test_resid_pre_stops_before_block_l_runs_and_attn_out_before_its_mlp(sample_texts, tmp_path, tiny_llama_dir):
    loaded = load(tiny_llama_dir)
    block = loaded.blocks[LAYER]
    calls = []
    handles = [block.self_attn.register_forward_pre_hook(lambda *a: calls.append("attention")),
               block.mlp.register_forward_pre_hook(lambda *a: calls.append("mlp"))]
    try:
        extract(loaded, sample_texts[:4], "resid_pre", tmp_path / "pre.npy")
        assert calls == []
        extract(loaded, sample_texts[:4], "attn_out", tmp_path / "attn.npy")
        assert calls == ["attention"]  # one batch of 4 texts; its MLP never ran
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_gpt2_dir", "tiny_llama_dir", "tiny_neox_dir", "minilm_dir", "tiny_gemma2_dir"])
def test_the_families_on_disk_have_all_five_hook_points(model, request):
    assert available_hook_points(load(request.getfixturevalue(model)).model) == HOOK_POINTS


def small(config_class, **extra):
    values = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, vocab_size=128)
    values.update(extra)
    return config_class(**values)


def meta_configs():
    import transformers as t

    kv = dict(num_key_value_heads=2, head_dim=8)
    return {
        "gpt2": t.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=128),
        "llama": small(t.LlamaConfig, num_key_value_heads=2),
        "mistral": small(t.MistralConfig, num_key_value_heads=2),
        "qwen2": small(t.Qwen2Config, num_key_value_heads=2),
        "qwen3": small(t.Qwen3Config, **kv),
        "gemma": small(t.GemmaConfig, **kv),
        "gemma2": small(t.Gemma2Config, **kv),
        "gemma3": small(t.Gemma3TextConfig, **kv),
        "phi": small(t.PhiConfig),
        "phi3": small(t.Phi3Config, pad_token_id=0),
        "gpt_neox": small(t.GPTNeoXConfig),
        "bert": small(t.BertConfig),
    }


@pytest.mark.parametrize("family", list(meta_configs()))
def test_a_model_built_from_its_config_on_the_meta_device_tells_its_hook_points(family):
    assert available_hook_points_for_config(meta_configs()[family]) == HOOK_POINTS


def test_a_block_without_attention_or_mlp_has_only_the_residual_points(tiny_mamba_dir):
    from transformers import AutoConfig

    assert available_hook_points_for_config(AutoConfig.from_pretrained(tiny_mamba_dir)) == ("resid_post", "resid_pre")


def test_extracting_at_a_point_the_model_lacks_names_those_it_has(tiny_mamba_dir, sample_texts, tmp_path):
    loaded = load(tiny_mamba_dir)
    with pytest.raises(EngineError, match="This model has no mlp_out hook point: it has resid_post, resid_pre"):
        extract(loaded, sample_texts[:2], "mlp_out", tmp_path / "a.npy")


def test_an_unknown_hook_point_names_the_valid_ones(tiny_gpt2_dir, sample_texts, tmp_path):
    with pytest.raises(EngineError, match="Unknown hook point 'resid_mid': choose one of resid_post, resid_pre, mlp_out, attn_out"):
        extract(load(tiny_gpt2_dir), sample_texts[:2], "resid_mid", tmp_path / "a.npy")


@pytest.fixture(scope="module", params=CAUSAL)
def with_head(request):
    return load(request.getfixturevalue(request.param), with_lm_head=True)


@pytest.mark.slow
@pytest.mark.parametrize("hook_point", HOOK_POINTS)
def test_an_identity_sae_spliced_at_each_point_recovers_the_clean_loss_and_ablation_changes_it(with_head, sample_texts, hook_point):
    result = ce_loss_evaluation(with_head, sample_texts[:12], layer_number=LAYER, reconstruct=lambda x: x,
                                max_sequence_length=MAX_LEN, batch_size=4, hook_point=hook_point)
    assert result["ce_loss_with_sae"] == pytest.approx(result["ce_loss_clean"], rel=1e-6)
    assert abs(result["ce_loss_zero_ablation"] - result["ce_loss_clean"]) > 1e-5
    assert result["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-3)


def test_resid_pre_is_replaced_whether_hidden_states_comes_by_position_or_by_name(tiny_gpt2_dir):
    block = load(tiny_gpt2_dir).blocks[LAYER]
    x = torch.randn(1, 5, 32)
    handle = register_writer(block, "resid_pre", lambda hidden: hidden * 0 + 1)
    try:
        with torch.inference_mode():
            by_position, by_name = block(x), block(hidden_states=x)
    finally:
        handle.remove()
    with torch.inference_mode():
        ones = block(torch.ones_like(x))
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    torch.testing.assert_close(first(by_position), first(ones))
    torch.testing.assert_close(first(by_name), first(ones))
    assert not torch.allclose(first(ones), first(block(x)))
