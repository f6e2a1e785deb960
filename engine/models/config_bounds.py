"""What a model's config may ask for before anything is built from it.

A config comes from whoever published the model: a limited child of the web process reads it to
answer validate-model and check-memory (engine.models.facts), and builds copies of one and two
layers on the meta device; a worker builds and loads the model itself. Building costs time for
every module (about 2 ms a layer of a Llama), so a config of two million layers, or of a thousand
layers of four thousand experts, would hold a worker for an hour and tens of GB. Every size field
is bounded here, and so is the product of the fields that multiply the layers, on the raw
config.json before transformers reads it and again on the config it made (a GGUF's, and sizes
transformers derived), with limits far above any real model's (Llama 3.1 405B: 126 layers, hidden
16,384, intermediate 53,248, 128 heads, vocabulary 128,256; Gemma 3's vocabulary 262,144; Llama 4
Scout's 10M positions; DeepSeek V3's 256 experts).
A config that needs code from its repository (auto_map for a model type transformers does not
ship) or a vision backbone (timm, or another model's weights) is refused: neither is a language
model this server can train on, and both would run or fetch more than a config.
"""
from collections.abc import Mapping

from engine.errors import EngineError

# (the field names and their aliases across model types, the largest value allowed, what it counts)
SIZE_LIMITS: tuple[tuple[tuple[str, ...], int, str], ...] = (
    (("num_hidden_layers", "n_layer", "n_layers", "num_layers", "num_encoder_layers", "num_decoder_layers",
      "encoder_layers", "decoder_layers"), 1024, "layers"),
    (("hidden_size", "n_embd", "n_embed", "d_model", "embed_dim", "emb_dim", "d_embed", "dim",
      "word_embed_proj_dim", "head_dim", "d_kv", "kv_channels"), 65536, "hidden units"),
    (("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", "d_ff", "hidden_dim", "encoder_ffn_dim",
      "decoder_ffn_dim", "moe_intermediate_size", "shared_expert_intermediate_size"), 262144, "intermediate units"),
    (("num_attention_heads", "n_head", "n_heads", "num_heads", "num_key_value_heads", "n_head_kv",
      "num_kv_heads", "multi_query_group_num", "encoder_attention_heads", "decoder_attention_heads"), 1024, "heads"),
    (("vocab_size", "n_vocab", "padded_vocab_size"), 1_048_576, "tokens"),
    (("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length", "max_sequence_length",
      "num_positions"), 16_777_216, "positions"),
    (("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok",
      "n_shared_experts"), 4096, "experts"),
    # ALBERT's groups of layers and the layers inside each (both 1 in every released ALBERT).
    (("num_hidden_groups", "inner_group_num"), 1024, "layers"),
)
# Fields that multiply the layers a model builds, whatever each alone: the stack's depth, ALBERT's
# groups and the layers inside each group, and the experts of a mixture-of-experts layer (Switch
# Transformers, NLLB-MoE, Mixtral, DeepSeek ...). Their product is bounded too: real models stay
# under 31,000 (switch-c-2048: 15 layers x 2,048 experts; DeepSeek V3: 61 x 256), while a config
# of 1,024 layers x 4,096 experts, each field within its own bound, builds four million MLPs.
DEPTH_FIELDS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "num_encoder_layers", "num_decoder_layers",
                "encoder_layers", "decoder_layers", "num_hidden_groups")
INNER_LAYER_FIELDS = ("inner_group_num",)
EXPERT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
MAX_LAYER_PRODUCT = 65_536
_LIMITS = {name: (limit, unit) for names, limit, unit in SIZE_LIMITS for name in names}
# Fields that make transformers build a vision backbone: from timm, or from another checkpoint.
_BACKBONE_FIELDS = ("use_timm_backbone", "use_pretrained_backbone", "backbone_config", "backbone")
# Nesting deeper than any real config (a multimodal model's text_config inside its config).
_MAX_DEPTH = 8


class ConfigRefused(EngineError):
    """A model config this server will not build a model from; the message names the field."""


def check_config(config: Mapping, *, model_name: str) -> None:
    """Refuse (ConfigRefused) a config (its JSON as a dict, sub-configs included) whose sizes are
    beyond SIZE_LIMITS, that needs its repository's code, or that builds a vision backbone."""
    if not isinstance(config, Mapping):
        raise ConfigRefused(f"The config.json of model '{model_name}' is not a JSON object ({type(config).__name__})")
    _check_remote_code(config, model_name)
    _walk(config, model_name, path="", depth=0)


def _check_remote_code(config: Mapping, model_name: str) -> None:
    auto_map = config.get("auto_map")
    if not auto_map:
        return
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    # A model type transformers ships runs transformers' own code whatever auto_map says.
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ConfigRefused(
            f"Model '{model_name}' needs code from its own repository (auto_map, model_type {model_type!r} is not "
            "one transformers ships): this server never runs a repository's code (trust_remote_code). "
            "Use a model whose architecture transformers supports."
        )


def _walk(config: Mapping, model_name: str, *, path: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ConfigRefused(f"The config of model '{model_name}' nests sub-configs more than {_MAX_DEPTH} deep at {path}")
    for key, value in config.items():
        field = f"{path}{key}"
        if key in _BACKBONE_FIELDS and value:
            raise ConfigRefused(
                f"Model '{model_name}' builds a vision backbone ({field} is set): this server trains on "
                "language models only, and never fetches a backbone's weights or code."
            )
        if isinstance(value, Mapping):
            _walk(value, model_name, path=f"{field}.", depth=depth + 1)
        elif key in _LIMITS:
            _check_size(field, value, *_LIMITS[key], model_name)
    _check_layer_product(config, model_name, path)


def layer_product(config: Mapping) -> tuple[int, list[str]]:
    """The product of one config level's layer-multiplying fields (the largest depth field, the
    layers inside a group, the experts) and the fields it came from."""
    def largest(names):
        found = [(value, name) for name in names if _is_count(value := config.get(name))]
        return max(found) if found else None

    factors = [f for f in (largest(DEPTH_FIELDS), largest(INNER_LAYER_FIELDS), largest(EXPERT_FIELDS)) if f]
    product = 1
    for value, _ in factors:
        product *= max(1, int(value))
    return product, [f"{name} {int(value):,}" for value, name in factors]


def _is_count(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1


def _check_layer_product(config: Mapping, model_name: str, path: str) -> None:
    product, factors = layer_product(config)
    if product > MAX_LAYER_PRODUCT:
        raise ConfigRefused(
            f"The config of model '{model_name}' multiplies its layers to {product:,} "
            f"({' x '.join(f'{path}{factor}' for factor in factors)}); this server reads models of at most "
            f"{MAX_LAYER_PRODUCT:,} layers times experts (the largest real ones build about 31,000)."
        )


def _check_size(field: str, value, limit: int, unit: str, model_name: str) -> None:
    # Some configs give a size per layer (OpenELM's heads): every element is bounded.
    values = value if isinstance(value, (list, tuple)) else [value]
    for one in values:
        if isinstance(one, bool) or not isinstance(one, (int, float)):
            continue  # null, or a type transformers itself refuses
        if one > limit:
            raise ConfigRefused(
                f"The config of model '{model_name}' asks for {field} = {one:,} {unit}; this server reads models "
                f"of at most {limit:,} {unit} there ({field} <= {limit:,})."
            )
        if one < 0:
            raise ConfigRefused(f"The config of model '{model_name}' has {field} = {one}: a size cannot be negative.")
