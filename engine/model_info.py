"""What a model is, read from its config alone (no weights loaded). Its sizes are bounded
(engine.config_bounds) before any model is built from it, even on the meta device."""

import threading
from dataclasses import asdict, dataclass
from functools import lru_cache

from engine.config_bounds import check_config
from engine.errors import EngineError
from engine.resolve import ResolvedModel

_META_BUILD = threading.Lock()
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


def count_parameters(config) -> int:
    """The parameters of the model `config` describes, built on the meta device. A config
    transformers cannot build a model from (heads that do not divide the hidden size, ...) is an
    EngineError that says so."""
    try:
        return _count_parameters(_ConfigKey(config))
    except Exception as exc:  # noqa: BLE001 - each model class refuses inconsistent sizes in its own way
        lines = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
        raise EngineError(f"transformers cannot build a {config.model_type} model from this config ({reason})") from exc


class _ConfigKey:
    """Hashes a config by its JSON so equal configs share one cache entry."""

    def __init__(self, config):
        self.config = config
        self.json = config.to_json_string()

    def __hash__(self):
        return hash(self.json)

    def __eq__(self, other):
        return isinstance(other, _ConfigKey) and self.json == other.json


@lru_cache(maxsize=64)
def _count_parameters(key: _ConfigKey) -> int:
    import torch
    from transformers import AutoModel
    from transformers.initialization import no_init_weights

    # On the meta device parameters have shapes but no storage: counting a 70B model costs nothing
    # but building its modules, and without their random initialisation that costs half as much.
    # no_init_weights swaps torch's init functions process-wide and puts back what it found, so two
    # threads inside it at once could leave them switched off: one build at a time.
    with _META_BUILD, torch.device("meta"), no_init_weights():
        model = AutoModel.from_config(key.config)
    return sum(p.numel() for p in model.parameters())


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
    resolved: ResolvedModel, config, *, selected_layer: int | None = None, requires_token: bool = False
) -> ModelInfo:
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
        parameter_count=count_parameters(config),
        is_causal_lm=is_causal_lm(config),
    )
