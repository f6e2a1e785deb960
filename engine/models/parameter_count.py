"""How many parameters a model has, read from what its files say rather than from building it.

In order: the safetensors headers of a local folder (the shards its index names, or every
`*.safetensors` beside config.json), the tensor table of a GGUF file, the hub's safetensors
metadata of a hub model at its pinned commit. Each is the count of the tensors the checkpoint
stores (a tied embedding once; an LM head the checkpoint holds counts too). Where none exists (a
config-only folder, a repository of `.bin` files only) the count is extrapolated from the model
built on the meta device at depths and expert counts of one and two (`small_copy`), never at the
config's own: a model's parameters are affine in each of those counts (one more layer adds the same
parameters), so the one- and two-layer builds give the rest. A mixture whose sparse layers come
every few layers (Switch Transformers' sparse step) is extrapolated as if they were spread evenly.

Everything here reads untrusted files: the web process runs it in a limited child
(engine.models.facts through mistudio.sandbox), a worker in its own process.
"""
import copy
import json
import math
import struct
import threading
from itertools import combinations
from pathlib import Path, PurePosixPath

from engine.models.config_bounds import DEPTH_FIELDS, EXPERT_FIELDS, INNER_LAYER_FIELDS
from engine.errors import EngineError
from engine.models.resolve import within_timeout

# A safetensors header lists each tensor's name, dtype, shape and offsets: about 150 bytes a tensor,
# so a 2,000-tensor shard's is 300 kB. Past this the file is not read as one.
MAX_SAFETENSORS_HEADER_BYTES = 64 * 1024 * 1024
# Shards a folder's index may name (Llama 3.1 405B has 191).
MAX_SHARDS = 4096
_MULTIPLIERS = DEPTH_FIELDS + INNER_LAYER_FIELDS + EXPERT_FIELDS
# Per-layer lists whose length follows the depth (Gemma 3's and Qwen 3's layer_types, ...).
_PER_LAYER_LISTS = ("layer_types", "no_rope_layers")
_SPARSE_COUNTS = {"num_sparse_encoder_layers": "num_layers", "num_sparse_decoder_layers": "num_decoder_layers"}
_META_BUILD = threading.Lock()
_INTEGER_DTYPES = ("BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64")
_BUFFER_SUFFIXES = ("position_ids", "token_type_ids", ".inv_freq", ".attn.bias", ".attn.masked_bias")


def safetensors_header_count(file: Path) -> int:
    """The parameters of one safetensors file, from its header (8 bytes of length, then JSON)."""
    with open(file, "rb") as handle:
        head = handle.read(8)
        if len(head) != 8:
            raise EngineError(f"'{file.name}' is not a safetensors file: it is shorter than its header's length")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_SAFETENSORS_HEADER_BYTES:
            raise EngineError(f"'{file.name}' says its safetensors header is {length:,} bytes; this server reads "
                              f"headers of at most {MAX_SAFETENSORS_HEADER_BYTES:,}")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise EngineError(f"'{file.name}' has a safetensors header that is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise EngineError(f"'{file.name}' has a safetensors header that is not a JSON object")
    total = 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        shape = tensor.get("shape") if isinstance(tensor, dict) else None
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise EngineError(f"'{file.name}': tensor {name[:100]!r} has no valid shape in its safetensors header")
        if _is_parameter(name, tensor.get("dtype")):
            total += math.prod(shape)
    return total


def _is_parameter(name: str, dtype) -> bool:
    """A stored tensor that is a parameter, not a buffer older checkpoints saved beside them
    (BERT's position_ids, GPT-2's causal mask, a rotary embedding's frequencies), which the
    model built from the config does not count."""
    if isinstance(dtype, str) and dtype.upper() in _INTEGER_DTYPES:
        return False
    return not name.endswith(_BUFFER_SUFFIXES)


def local_safetensors_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder: the shards its index names, else every top-level one."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        if index.stat().st_size > MAX_SAFETENSORS_HEADER_BYTES:
            raise EngineError(f"'{index.name}' is {index.stat().st_size:,} bytes: not a real index")
        try:
            weight_map = json.loads(index.read_text()).get("weight_map") or {}
        except (ValueError, AttributeError) as exc:
            raise EngineError(f"'{index.name}' is not a safetensors index ({exc})") from None
        names = sorted({str(n) for n in weight_map.values()})
        if len(names) > MAX_SHARDS:
            raise EngineError(f"'{index.name}' names {len(names):,} shards; this server reads at most {MAX_SHARDS:,}")
        # The shards sit in the folder: a name climbing out of it is not followed.
        if any(PurePosixPath(n).is_absolute() or ".." in PurePosixPath(n).parts for n in names):
            raise EngineError(f"'{index.name}' names a shard outside the model's folder")
        files = [folder / n for n in names]
        return files if files and all(f.is_file() for f in files) else []
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file())


def gguf_tensor_count(gguf_file: Path) -> int:
    """The parameters of a GGUF file: the elements of every tensor its tensor table lists."""
    import gguf

    try:
        return sum(int(tensor.n_elements) for tensor in gguf.GGUFReader(gguf_file).tensors)
    except Exception as exc:  # noqa: BLE001 - gguf raises ValueError, struct errors, IndexError ...
        raise EngineError(f"Could not read the tensor table of '{Path(gguf_file).name}': {type(exc).__name__}: "
                          f"{str(exc)[:200]}") from None


def hub_safetensors_count(repo_id: str, *, revision: str | None, token, timeout_s: float) -> int | None:
    """The parameters the hub's safetensors metadata lists for a repository at `revision`, or None
    when it has no safetensors files or does not answer within timeout_s."""
    def ask():
        from huggingface_hub import get_safetensors_metadata

        metadata = get_safetensors_metadata(repo_id, revision=revision, token=token)
        return sum(math.prod(info.shape) for file in metadata.files_metadata.values()
                   for name, info in file.tensors.items() if _is_parameter(name, info.dtype))

    try:
        return within_timeout(ask, timeout_s, name=f"hub-safetensors-{repo_id}")
    except Exception:  # noqa: BLE001 - not a safetensors repository, the hub failed, or no answer in time
        return None


def parameter_count(resolved, config, *, token=None, hub_timeout_s: float = 10.0) -> tuple[int, str]:
    """(the parameters of the model, where the number came from)."""
    gguf_file = resolved.gguf_file
    if gguf_file is not None:
        return gguf_tensor_count(gguf_file), "the GGUF file's tensor table"
    if resolved.source == "hub":
        count = hub_safetensors_count(resolved.location, revision=resolved.revision, token=token,
                                      timeout_s=hub_timeout_s)
        if count:
            return count, "the hub's safetensors metadata"
    else:
        files = local_safetensors_files(Path(resolved.location))
        if files:
            return sum(safetensors_header_count(f) for f in files), "the safetensors headers"
    return count_parameters(config), "extrapolated from the model built at one and two layers on the meta device"


def count_parameters(config) -> int:
    """The parameters of the model `config` describes, from builds at one and two layers (and
    experts) on the meta device: affine in each count, with a term for each pair (layers x experts,
    ALBERT's groups x layers per group). A config transformers cannot build a model from (heads
    that do not divide the hidden size, ...) is an EngineError that says so."""
    fields = multiplier_fields(config.to_dict())
    ones = {key: 1 for key in fields}
    base = _built_count(config, ones)
    total = float(base)
    single = {}
    for key, units in fields.items():
        single[key] = _built_count(config, {**ones, key: 2}) - base
        total += (units - 1) * single[key]
    for first, second in combinations(fields, 2):
        if first[0] != second[0] or fields[first] == 1 or fields[second] == 1:
            continue  # fields of different sub-configs do not multiply each other
        both = _built_count(config, {**ones, first: 2, second: 2})
        total += (fields[first] - 1) * (fields[second] - 1) * (both - single[first] - single[second] - base)
    return round(total)


def multiplier_fields(data: dict, path: tuple = ()) -> dict[tuple, float]:
    """{(sub-config path, field): units} for every layer-, group- or expert-count field of a config;
    a depth counts in periods of its sparse layers (a Switch Transformers stack whose every second
    layer is sparse: in pairs of layers)."""
    found = {}
    for key, value in data.items():
        if isinstance(value, dict):
            found.update(multiplier_fields(value, (*path, key)))
        elif key in _MULTIPLIERS and isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            found[(path, key)] = value / _period(data, key)
    return found


def _period(level: dict, key: str) -> int:
    """The layers of one repeat of a stack's pattern of dense and sparse layers (1 for most)."""
    depth = level[key]
    sparse = next((s for s, d in _SPARSE_COUNTS.items() if d == key), None)
    if sparse is not None and isinstance(level.get(sparse), int) and level[sparse] > 0:
        period = depth // level[sparse]
    else:
        step = {"encoder_layers": "encoder_sparse_step", "decoder_layers": "decoder_sparse_step",
                "num_hidden_layers": "decoder_sparse_step"}.get(key)
        period = level.get(step) if step else 1
    return period if isinstance(period, int) and 1 <= period <= min(depth, 64) else 1


def small_copy(config, counts: dict[tuple, int] | None = None):
    """A copy of `config` with every layer-, group- and expert-count field set to one unit (one
    layer, or one period of dense and sparse layers; one expert), or to the units `counts` says:
    what hook points are read from and parameters extrapolated from."""
    data = copy.deepcopy(config.to_dict())
    fields = multiplier_fields(data)
    counts = {key: 1 for key in fields} | (counts or {})
    for (path, key), units in counts.items():
        level = data
        for part in path:
            level = level[part]
        _set_count(level, key, units)
    return type(config).from_dict(data)


def _set_count(level: dict, key: str, units: int) -> None:
    old, period = level[key], _period(level, key)
    value = units * period
    level[key] = value
    if key in EXPERT_FIELDS:
        # The experts each token goes to cannot outnumber the experts.
        for top_k in ("num_experts_per_tok", "moe_topk", "top_k"):
            if isinstance(level.get(top_k), int):
                level[top_k] = min(level[top_k], value)
        for group in ("n_group", "topk_group"):
            if isinstance(level.get(group), int):
                level[group] = 1
        return
    for sparse, depth in _SPARSE_COUNTS.items():
        if depth == key and isinstance(level.get(sparse), int) and level[sparse] > 0:
            level[sparse] = units
            # Switch Transformers derives its sparse step from the two counts; to_dict kept the old one.
            level[sparse.replace("num_sparse_", "").replace("_layers", "_sparse_step")] = period
    for name, listed in list(level.items()):
        if name in _PER_LAYER_LISTS and isinstance(listed, list) and len(listed) == old:
            level[name] = (listed * value)[:value]


def _built_count(config, counts: dict) -> int:
    try:
        small = small_copy(config, counts)
        return _meta_count(small)
    except Exception as exc:  # noqa: BLE001 - each model class refuses inconsistent sizes in its own way
        lines = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
        raise EngineError(f"transformers cannot build a {config.model_type} model from this config ({reason})") from exc


def _meta_count(config) -> int:
    import torch
    from transformers import AutoModel
    from transformers.initialization import no_init_weights

    # On the meta device parameters have shapes but no storage; without their random
    # initialisation a build costs half as much. no_init_weights swaps torch's init functions
    # process-wide and puts back what it found, so two threads inside it at once could leave them
    # switched off: one build at a time.
    with _META_BUILD, torch.device("meta"), no_init_weights():
        model = AutoModel.from_config(config)
    return sum(p.numel() for p in model.parameters())
