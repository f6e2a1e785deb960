"""Where in a block the SAE reads (and evaluation writes): its hook point.

Four points, named as TransformerLens names them (`blocks.{L}.hook_<point>`):

- resid_post: block L's output, the residual stream after it (the default);
- resid_pre: block L's input, the residual stream before it;
- attn_out: the attention's output as it is added to the residual stream;
- mlp_out: the MLP's output as it is added to the residual stream;
- mlp_in: the MLP's input, after the norm in front of it (TransformerLens' `blocks.{L}.ln2.hook_normalized`),
  read by a forward pre-hook on the MLP: what a transcoder reads (engine.sae.transcoder).

The attention and MLP are found by the block's module structure, never by the model's name, so a
family transformers adds later is covered when it is built like one of these:

- a child whose class is an attention (LlamaAttention, GPT2Attention, GPTNeoXAttention, ...) and
  a child that is the MLP (LlamaMLP, GPT2MLP, FFN, a mixture of experts, ...): their outputs are
  what is added (Llama, Mistral, Qwen, Gemma, Phi, Phi-3, GPT-2, GPT-NeoX's parallel residual,
  DistilBERT);
- a block that norms its MLP's output before adding it (`post_feedforward_layernorm`: Gemma 2 and
  3, OLMo 2) norms its attention's output the same way (`post_attention_layernorm`): the norms'
  outputs are what is added;
- a post-LN block (BERT, RoBERTa, MiniLM) adds and norms inside a sub-module holding one linear
  map and a norm (BertSelfOutput, BertOutput): the hook point is that linear map's output, before
  the residual add and the norm.

A model where a point's module cannot be found does not have that point (available_hook_points).
torch is imported inside functions: the web process asks on a model built on the meta device.
"""
from engine.errors import EngineError

RESID_POST, RESID_PRE, MLP_OUT, ATTN_OUT, MLP_IN = "resid_post", "resid_pre", "mlp_out", "attn_out", "mlp_in"
HOOK_POINTS = (RESID_POST, RESID_PRE, MLP_OUT, ATTN_OUT, MLP_IN)
DEFAULT_HOOK_POINT = RESID_POST
# The points every stack of blocks has: a block's input and output.
RESIDUAL_POINTS = (RESID_POST, RESID_PRE)

_MLP_CLASS_PARTS = ("mlp", "ffn", "feedforward", "moe")
_MLP_NAMES = ("mlp", "ffn", "feed_forward", "block_sparse_moe")
# A post-LN block's MLP is split in two children; the first one's input is the MLP's (BertIntermediate).
_MLP_FIRST_HALF_NAMES = ("intermediate",)
# Points read at a module's input (a forward pre-hook) rather than its output.
_INPUT_POINTS = (RESID_PRE, MLP_IN)


def transformerlens_name(hook_point: str, layer_number: int) -> str:
    """TransformerLens' name for the point (what a SAELens cfg's hook_name says)."""
    check_hook_point(hook_point)
    if hook_point == MLP_IN:
        return f"blocks.{layer_number}.ln2.hook_normalized"
    return f"blocks.{layer_number}.hook_{hook_point}"


def check_hook_point(hook_point: str) -> None:
    if hook_point not in HOOK_POINTS:
        raise EngineError(f"Unknown hook point {hook_point!r}: choose one of {', '.join(HOOK_POINTS)}")


def hook_module(block, hook_point: str):
    """The module of `block` whose output is the hook point (for mlp_in: whose input is), the block
    itself for resid_post, None for resid_pre (the block's input) and for a point this block does
    not have."""
    check_hook_point(hook_point)
    if hook_point == RESID_POST:
        return block
    if hook_point == RESID_PRE:
        return None
    children = dict(block.named_children())
    attention = next((m for m in children.values() if "attention" in type(m).__name__.lower()), None)
    if "post_feedforward_layernorm" in children and "post_attention_layernorm" in children:
        return children["post_attention_layernorm" if hook_point == ATTN_OUT else "post_feedforward_layernorm"]
    if hook_point == ATTN_OUT:
        if attention is None:
            return None
        return _post_ln_projection(attention) or attention
    mlp = next((m for name, m in children.items() if m is not attention and _is_mlp(name, m)), None)
    if hook_point == MLP_IN:
        return mlp if mlp is not None else next((children[n] for n in _MLP_FIRST_HALF_NAMES if n in children), None)
    if mlp is not None:
        return mlp
    # Post-LN: the MLP's second half is a direct child that adds and norms (BertOutput).
    return next((p for m in children.values() if m is not attention and (p := _post_ln_projection_of(m)) is not None), None)


def has_hook_point(block, hook_point: str) -> bool:
    return hook_point in RESIDUAL_POINTS or hook_module(block, hook_point) is not None


def available_hook_points(model) -> tuple[str, ...]:
    """The hook points `model` has, in HOOK_POINTS order. Its blocks are alike, so block 0 tells.
    Works on a model built on the meta device (no weights): see available_hook_points_for_config."""
    from engine.models.loading import find_blocks

    block = find_blocks(model, model.config)[0]
    return tuple(point for point in HOOK_POINTS if has_hook_point(block, point))


def available_hook_points_for_config(config) -> tuple[str, ...]:
    """available_hook_points of the model `config` describes, read from a copy of one layer and
    one expert built on the meta device (engine.models.parameter_count.small_copy): its blocks are alike,
    so one tells, and no size field of the config multiplies the work. Shapes and no storage: it
    costs milliseconds and creates no CUDA context."""
    key = config.to_json_string()
    if key not in _POINTS_BY_CONFIG:
        import torch
        from transformers import AutoModel

        from engine.models.parameter_count import small_copy

        with torch.device("meta"):
            model = AutoModel.from_config(small_copy(config))
        if len(_POINTS_BY_CONFIG) >= 64:
            _POINTS_BY_CONFIG.clear()
        _POINTS_BY_CONFIG[key] = available_hook_points(model)
    return _POINTS_BY_CONFIG[key]


# Configs are not hashable: the answers are kept by the config's JSON.
_POINTS_BY_CONFIG: dict[str, tuple[str, ...]] = {}


def _is_mlp(name: str, module) -> bool:
    kind = type(module).__name__.lower()
    return name in _MLP_NAMES or any(part in kind for part in _MLP_CLASS_PARTS)


def _post_ln_projection(attention):
    """The output projection of a post-LN attention (BertAttention's output.dense), or None."""
    return next((p for m in attention.children() if (p := _post_ln_projection_of(m)) is not None), None)


def _post_ln_projection_of(module):
    """module's one linear map when module also holds a norm (it adds the residual and norms
    inside, as BertSelfOutput and BertOutput do), else None."""
    children = list(module.children())
    linear = [m for m in children if _is_linear(m)]
    has_norm = any("norm" in type(m).__name__.lower() for m in children)
    return linear[0] if has_norm and len(linear) == 1 else None


def _is_linear(module) -> bool:
    import torch.nn as nn

    # GPT-2 style models use transformers' Conv1D, a linear map with its weight transposed.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def register_reader(block, hook_point: str, read):
    """Call read(hidden) with the point's value [batch, positions, d_model] on every forward pass
    through `block`; `read` may raise to stop the forward there (extraction does). resid_pre reads
    in a forward pre-hook of the block, before the block runs. Returns the hook's handle."""
    if hook_point in _INPUT_POINTS:
        def before(_module, args, kwargs):
            read(_hidden_argument(args, kwargs))

        module = block if hook_point == RESID_PRE else _module_for(block, hook_point)
        return module.register_forward_pre_hook(before, with_kwargs=True)

    def after(_module, _inputs, output):
        read(output[0] if isinstance(output, tuple) else output)

    return _module_for(block, hook_point).register_forward_hook(after)


def register_writer(block, hook_point: str, replace):
    """Put replace(hidden) in place of the point's value on every forward pass through `block`,
    as the model goes on from there (replace returns None to leave it). Returns the hook's handle."""
    if hook_point in _INPUT_POINTS:
        def before(_module, args, kwargs):
            new = replace(_hidden_argument(args, kwargs))
            if new is None:
                return None
            # transformers passes a block its hidden_states positionally (Llama, GPT-2, BERT, ...);
            # a caller may name it.
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        module = block if hook_point == RESID_PRE else _module_for(block, hook_point)
        return module.register_forward_pre_hook(before, with_kwargs=True)

    def after(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = replace(hidden)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return _module_for(block, hook_point).register_forward_hook(after)


def _hidden_argument(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _module_for(block, hook_point: str):
    module = hook_module(block, hook_point)
    if module is None:
        raise EngineError(f"This model's blocks have no {hook_point} that can be found: its hook points are "
                          f"{', '.join(p for p in HOOK_POINTS if has_hook_point(block, p))}")
    return module
