import pytest
from transformers import AutoConfig, AutoModel

from engine.errors import EngineError
from engine.models.info import describe_model, hidden_size, is_causal_lm, num_layers, vocab_size
from engine.models.parameter_count import count_parameters
from engine.models.resolve import resolve_model


@pytest.mark.parametrize(
    "fixture, layers, hidden, vocab, causal",
    [
        ("tiny_gpt2_dir", 3, 32, 50257, True),
        ("tiny_llama_dir", 3, 32, 50257, True),
        ("minilm_dir", 6, 384, 30522, False),
    ],
)
def test_it_describes_real_models_from_their_config(request, tmp_path, fixture, layers, hidden, vocab, causal):
    directory = request.getfixturevalue(fixture)
    resolved = resolve_model(str(directory), models_dir=tmp_path)
    config = AutoConfig.from_pretrained(directory)
    info = describe_model(resolved, config, selected_layer=1)

    assert (info.total_layers, info.hidden_size, info.vocab_size) == (layers, hidden, vocab)
    assert (num_layers(config), hidden_size(config), vocab_size(config)) == (layers, hidden, vocab)
    assert info.is_causal_lm is causal
    assert info.architecture == config.model_type
    assert info.actual_model_loaded == str(directory.resolve())
    loaded = AutoModel.from_pretrained(directory)
    assert info.parameter_count == sum(p.numel() for p in loaded.parameters())
    assert info.to_dict()["selected_layer"] == 1


def test_counting_parameters_allocates_no_weights(tiny_llama_dir):
    config = AutoConfig.from_pretrained(tiny_llama_dir)
    # About 30B parameters: 120 GB in fp32 if they were allocated, which this machine does not have.
    config.num_hidden_layers = 2000
    config.hidden_size = 1024
    config.intermediate_size = 4096
    config.num_attention_heads = 8
    config.num_key_value_heads = 8
    assert count_parameters(config) > 2000 * 4 * 1024 * 1024


def test_a_selected_layer_outside_the_model_is_rejected(tiny_gpt2_dir, tmp_path):
    resolved = resolve_model(str(tiny_gpt2_dir), models_dir=tmp_path)
    with pytest.raises(EngineError, match="Layer 3 does not exist: .* has layers 0 to 2"):
        describe_model(resolved, AutoConfig.from_pretrained(tiny_gpt2_dir), selected_layer=3)


def test_bert_is_not_a_causal_lm_even_though_it_has_a_decoder_variant():
    from transformers import BertConfig, GPT2Config

    assert is_causal_lm(BertConfig()) is False
    assert is_causal_lm(GPT2Config()) is True
    assert is_causal_lm(BertConfig(architectures=["BertLMHeadModel"], is_decoder=True)) is True
