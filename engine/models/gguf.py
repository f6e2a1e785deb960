"""GGUF files (llama.cpp's format): finding one, reading what model it holds from its metadata
alone, and converting it once into an ordinary safetensors folder that later loads take in seconds.

Describing reads the header only (transformers builds the config from the metadata; the tensors
stay on disk behind a memmap), so the web process may do it. Converting dequantizes every tensor:
only a worker does it, in `converted_folder`, once per GGUF file and cache folder.
"""
import copy
import fcntl
import hashlib
import re
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from engine.errors import EngineError, ModelResolutionError
from engine.files import AtomicFolder

SUFFIX = ".gguf"
# What the identity of a file is read from: its size and its first and last bytes. The head holds
# the metadata and the tensor table, the tail the last tensor's weights, so two quantizations or
# two fine-tunes of one model differ there; reading the whole of a 40 GB file would take minutes.
_IDENTITY_BYTES = 1024 * 1024
# Compared after converting: the saved tokenizer must split text as the GGUF's did.
_ROUND_TRIP_TEXT = "The capital of France is Paris. 1969: ünïcödé, code_points & <tags>!"


def find_gguf(path: Path) -> Path | None:
    """The GGUF file `path` names: itself, or the only .gguf in a folder without a config.json
    (a folder with one is a Hugging Face model folder). None when there is none."""
    if path.is_file():
        return path.resolve() if path.suffix.lower() == SUFFIX else None
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(p for p in path.iterdir() if p.suffix.lower() == SUFFIX and p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found[:5]) + (", ..." if len(found) > 5 else "")
        raise ModelResolutionError(
            f"Folder '{path}' holds {len(found)} GGUF files ({names}): name the one to load, "
            f"e.g. '{path / found[0].name}'"
        )
    return found[0].resolve() if found else None


def gguf_config(gguf_file: Path):
    """The transformers config of the model in `gguf_file`, from its metadata (no tensor is read).
    Cached per file, size and modification time: parsing the tokenizer's arrays takes seconds."""
    stat = Path(gguf_file).stat()
    return copy.deepcopy(_config(str(gguf_file), stat.st_size, stat.st_mtime_ns))


@lru_cache(maxsize=16)
def _config(path: str, size: int, mtime_ns: int):
    from transformers import AutoConfig

    file = Path(path)
    try:
        return AutoConfig.from_pretrained(file.parent, gguf_file=file.name, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - gguf raises ValueError, KeyError, struct errors ...
        raise _unreadable(file, exc) from exc


def _unreadable(file: Path, exc: BaseException) -> ModelResolutionError:
    import transformers
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    unsupported = re.search(r"architecture (\S+) is not supported", str(exc))
    if unsupported:
        return ModelResolutionError(
            f"GGUF file '{file.name}' holds a '{unsupported.group(1)}' model, which the installed transformers "
            f"({transformers.__version__}) cannot load from GGUF (it loads {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}): "
            "convert the model to a Hugging Face folder (config.json and safetensors) instead"
        )
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return ModelResolutionError(f"Could not read the GGUF metadata of '{file.name}': {type(exc).__name__}: {first}")


def gguf_identity(gguf_file: Path) -> str:
    """A folder name for the conversion of this file: its stem and a hash of its size, head and
    tail, so a different GGUF (or a new version under the same name) never reuses a stale one."""
    gguf_file = Path(gguf_file)
    size = gguf_file.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with gguf_file.open("rb") as handle:
        digest.update(handle.read(_IDENTITY_BYTES))
        handle.seek(max(0, size - _IDENTITY_BYTES))
        digest.update(handle.read(_IDENTITY_BYTES))
    stem = re.sub(r"[^\w.-]", "_", gguf_file.stem)[:100]
    return f"{stem}-{digest.hexdigest()[:16]}"


def converted_folder(gguf_file: Path, cache_dir: Path) -> Path:
    """The safetensors folder `gguf_file` converts to under `cache_dir`, converting it if no
    process has yet. Concurrent callers (two workers starting on one model) take a file lock: the
    first converts, the others wait and reuse its folder, which appears whole or not at all."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    folder = cache_dir / gguf_identity(gguf_file)
    if folder.is_dir():
        return folder
    with _exclusive(cache_dir / f"{folder.name}.lock"):
        if not folder.is_dir():
            with AtomicFolder(folder) as partial:
                _convert(Path(gguf_file), partial)
    return folder


@contextmanager
def _exclusive(lock_file: Path):
    # The lock file stays: removing it while another process waits on it would let a third
    # process lock a new file of the same name and convert beside the second.
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert(gguf_file: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    # Every architecture transformers reads from GGUF is a decoder LM but T5's.
    causal = gguf_config(gguf_file).model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    auto = AutoModelForCausalLM if causal else AutoModel
    # float32 keeps the dequantized values exactly; a load later picks the compute dtype.
    dequantized = auto.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32,
                                       trust_remote_code=False)
    config = dequantized.config
    # save_pretrained refuses a model that says it is GGUF-quantized, so the weights move into a
    # plain model of the same config (on the meta device and assigned: no second copy in memory).
    del config.quantization_config
    with torch.device("meta"):
        plain = auto.from_config(config)
    plain.load_state_dict(dequantized.state_dict(), assign=True)
    plain.tie_weights()
    plain.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, trust_remote_code=False)
    tokenizer.save_pretrained(folder)
    expected = tokenizer(_ROUND_TRIP_TEXT).input_ids
    if AutoTokenizer.from_pretrained(folder, trust_remote_code=False)(_ROUND_TRIP_TEXT).input_ids != expected:
        raise EngineError(f"The tokenizer of '{gguf_file.name}' does not survive conversion: its saved copy splits text differently")
