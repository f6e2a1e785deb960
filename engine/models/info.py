"""What a model is, read from its config and its files' metadata (no weights loaded). Its sizes are
bounded (engine.models.config_bounds) before any model is built from it, even on the meta device, and
none is built at its full depth (engine.models.parameter_count)."""

from dataclasses import asdict, dataclass

from engine.models.config_bounds import check_config
from engine.errors import EngineError
from engine.models.parameter_count import parameter_count
from engine.models.resolve import ResolvedModel

_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model")


def _text_config(config):
    # Multimodal configs (Llava, Gemma 3, ...) keep the language model's sizes in a sub-config.
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def _first_int(config, keys: tuple[str, ...], what: str) -> int:
    text = _text_config(config)
    for key in keys:
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise EngineError(f"Model config ({config.model_type}) has no {what} ({', '.join(keys)}): unsupported architecture")


def num_layers(config) -> int:
    return _first_int(config, _LAYER_KEYS, "layer count")


def hidden_size(config) -> int:
    return _first_int(config, _HIDDEN_KEYS, "hidden size")


def vocab_size(config) -> int:
    return _first_int(config, ("vocab_size",), "vocabulary size")


def intermediate_size(config) -> int | None:
    text = _text_config(config)
    return getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None)


def attention_heads(config) -> int | None:
    text = _text_config(config)
    return getattr(text, "num_attention_heads", None) or getattr(text, "n_head", None)


@dataclass(frozen=True)
class ModelSizes:
    """The sizes a memory estimate reads (engine.models.memory): plain numbers, so the web process holds
    no config object (it learns them from a limited child, engine.models.facts)."""
    num_layers: int
    hidden_size: int
    vocab_size: int
    intermediate_size: int | None = None  # None: 4 x hidden_size is assumed
    num_attention_heads: int | None = None  # None: hidden_size / 64 is assumed

    def to_dict(self) -> dict:
        return asdict(self)


def model_sizes(config) -> ModelSizes:
    return ModelSizes(num_layers=num_layers(config), hidden_size=hidden_size(config), vocab_size=vocab_size(config),
                      intermediate_size=_positive(intermediate_size(config)),
                      num_attention_heads=_positive(attention_heads(config)))


def _positive(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def is_causal_lm(config) -> bool:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    architectures = getattr(config, "architectures", None) or []
    if any("CausalLM" in a or "LMHeadModel" in a for a in architectures):
        return True
    if getattr(config, "is_encoder_decoder", False):
        return False
    model_type = getattr(_text_config(config), "model_type", config.model_type)
    # BERT-style encoders also appear in the causal mapping (BertLMHeadModel, used as a decoder
    # only when is_decoder=True); being in the masked-LM mapping marks them as encoders.
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return bool(getattr(config, "is_decoder", False))
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


@dataclass
class ModelInfo:
    model_name: str
    actual_model_loaded: str
    architecture: str
    total_layers: int
    selected_layer: int | None
    hidden_size: int
    vocab_size: int
    requires_token: bool
    parameter_count: int
    is_causal_lm: bool

    def to_dict(self) -> dict:
        return asdict(self)


def describe_model(
    resolved: ResolvedModel, config, *, selected_layer: int | None = None, requires_token: bool = False,
    token=None, hub_timeout_s: float = 10.0,
) -> ModelInfo:
    """What the model is; its parameters from its files' metadata where they have some
    (engine.models.parameter_count), the config's sizes bounded first."""
    check_config(config.to_dict(), model_name=resolved.name)
    total = num_layers(config)
    if selected_layer is not None and not 0 <= selected_layer < total:
        raise EngineError(f"Layer {selected_layer} does not exist: '{resolved.name}' has layers 0 to {total - 1}")
    return ModelInfo(
        model_name=resolved.name,
        actual_model_loaded=resolved.location,
        architecture=config.model_type,
        total_layers=total,
        selected_layer=selected_layer,
        hidden_size=hidden_size(config),
        vocab_size=vocab_size(config),
        requires_token=requires_token,
        parameter_count=parameter_count(resolved, config, token=token, hub_timeout_s=hub_timeout_s)[0],
        is_causal_lm=is_causal_lm(config),
    )
