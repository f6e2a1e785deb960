"""The weight files a hub model's `from_pretrained` will download, with their sizes, known before a
byte of them is downloaded: the repository's file list at the pinned commit (the hub's model info,
sizes included), the choice transformers 5 makes among them, and what the local hub cache already
holds at that commit (not downloaded again).

transformers' choice (modeling_utils._get_resolved_checkpoint_files, no variant, no subfolder):
the file config.json names in `transformers_weights`, else model.safetensors, else the shards that
model.safetensors.index.json's weight_map names, else pytorch_model.bin, else the shards of
pytorch_model.bin.index.json. An index is a small JSON file that is downloaded (it is what
from_pretrained reads first anyway), its size bounded first; `read_index` parses it (the web
process passes one that parses in a limited child, mistudio.sandbox).
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from engine.errors import EngineError
from engine.models.resolve import MAX_CONFIG_BYTES, HubToken, ResolvedModel, StillWaiting, within_timeout

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
PYTORCH, PYTORCH_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
# An index lists every tensor's shard: ~100 bytes a tensor, so ~10 MB for the largest models of
# the hub (DeepSeek-V3's ~90k tensors). As config.json, none larger is read.
MAX_INDEX_BYTES = MAX_CONFIG_BYTES


@dataclass(frozen=True)
class HubLimits:
    """What a worker's download of a hub model keeps to (engine.models.loading.load_model)."""

    timeout_s: float  # each hub request's, the listing's in all, and the download's per read (a stall)
    max_bytes: int | None = None  # the weights still to download; None: no limit
    reserve_bytes: int = 0  # left free on the hub cache's disk


class WeightsTooLarge(EngineError):
    """The weights to download are past the server's limit, or would not fit its disk."""


@dataclass(frozen=True)
class WeightFiles:
    """A hub model's weight files at its commit: every one with its size (`sizes`), and those the
    local hub cache already holds (`cached`)."""

    model: str  # the name the user gave
    revision: str | None
    sizes: dict[str, int]  # file name -> bytes on the hub (an index included: it is downloaded too)
    cached: frozenset[str] = field(default_factory=frozenset)

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    @property
    def to_download(self) -> dict[str, int]:
        return {name: size for name, size in self.sizes.items() if name not in self.cached}

    @property
    def download_bytes(self) -> int:
        return sum(self.to_download.values())

    def files_text(self, limit: int = 3) -> str:
        """The largest files to download, as people read them: 'model-00001-of-00004.safetensors
        (4.9 GB), ... and 2 more'."""
        from engine.disk import size_text

        largest = sorted(self.to_download.items(), key=lambda item: (-item[1], item[0]))
        named = ", ".join(f"{name} ({size_text(size)})" for name, size in largest[:limit])
        more = f" and {len(largest) - limit} more" if len(largest) > limit else ""
        return named + more

    def check_limit(self, max_bytes: int | None, setting: str = "MISTUDIO_MODEL_MAX_BYTES") -> None:
        """WeightsTooLarge when what is to download passes `max_bytes` (None or 0: no limit)."""
        from engine.disk import size_text

        if not max_bytes or self.download_bytes <= max_bytes:
            return
        raise WeightsTooLarge(
            f"The weights of '{self.model}' on the hub are {size_text(self.download_bytes)} to download "
            f"({self.download_bytes:,} bytes: {self.files_text()}), more than this server downloads "
            f"({size_text(max_bytes)}, {max_bytes:,} bytes; {setting}). Choose a smaller model, or ask an "
            "administrator to put this one in the models directory.")


def weight_files(resolved: ResolvedModel, *, token: HubToken, timeout_s: float,
                 read_index: Callable[[str], list[str]] | None = None) -> WeightFiles:
    """The weight files `from_pretrained` downloads for a hub model at resolved.revision, asked of
    the hub within `timeout_s` (an EngineError past it or when the hub does not answer).
    `read_index(path)`: the shard names of a downloaded index (default: shard_names, here)."""
    if resolved.source != "hub":
        raise ValueError("weight_files lists a hub model's files; this one is not from the hub")
    cached = cached_weight_files(resolved)
    if cached is not None:
        return cached
    try:
        return within_timeout(lambda: _weight_files(resolved, token, timeout_s, read_index or shard_names), timeout_s,
                              name=f"hub-files-{resolved.name}")
    except StillWaiting:
        raise EngineError(f"The weight files of '{resolved.name}': no answer from the hub within {timeout_s:g} s "
                          "(MISTUDIO_HUB_TIMEOUT_S)") from None
    except EngineError:
        raise
    except Exception as error:  # noqa: BLE001 - the hub's and the network's errors, named
        raise EngineError(f"Could not list the weight files of '{resolved.name}' on the hub: "
                          f"{type(error).__name__}: {_first_line(error)}") from error


def cached_weight_files(resolved: ResolvedModel) -> WeightFiles | None:
    """The model's weights when the hub cache holds every one at the commit (nothing to download,
    so the hub is not asked: a worker with the model cached loads it while the hub is down); None
    when some file would have to be asked for."""
    explicit = _cached_path(resolved.location, "config.json", resolved.revision)
    if explicit is None or _named_weights(explicit) is not None:
        return None  # transformers_weights: the hub's listing says whether that file is there
    index = _cached_path(resolved.location, SAFETENSORS_INDEX, resolved.revision)
    if _cached_path(resolved.location, SAFETENSORS, resolved.revision) is not None:
        names = [SAFETENSORS]
    elif index is not None:
        try:
            names = [SAFETENSORS_INDEX, *shard_names(index)]
        except EngineError:
            return None  # the hub's listing and the bounded read say what is wrong
    else:
        return None
    paths = {name: _cached_path(resolved.location, name, resolved.revision) for name in names}
    if any(path is None for path in paths.values()):
        return None
    return WeightFiles(model=resolved.name, revision=resolved.revision,
                       sizes={name: os.path.getsize(path) for name, path in paths.items()}, cached=frozenset(names))


def check_download(resolved: ResolvedModel, *, token: HubToken, timeout_s: float, max_bytes: int | None,
                   reserve_bytes: int = 0) -> WeightFiles | None:
    """Right before from_pretrained downloads: the weights still to download within `max_bytes`
    and within the hub cache's free disk less `reserve_bytes` (WeightsTooLarge otherwise)."""
    from huggingface_hub import constants

    from engine.disk import free_bytes, size_text

    if constants.is_offline_mode():
        return None  # from_pretrained reads the cache alone: it downloads nothing
    files = weight_files(resolved, token=token, timeout_s=timeout_s)
    files.check_limit(max_bytes)
    free = free_bytes(hub_cache_dir())
    if files.download_bytes and files.download_bytes > free - reserve_bytes:
        raise WeightsTooLarge(
            f"The weights of '{resolved.name}' are {size_text(files.download_bytes)} to download "
            f"({files.files_text()}) but the hub cache's disk ({hub_cache_dir()}) has {size_text(free)} free, of "
            f"which {size_text(reserve_bytes)} is kept in reserve (MISTUDIO_DISK_RESERVE_BYTES): free disk space "
            "and run the job again.")
    return files


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps what it downloads (HF_HUB_CACHE), read when asked."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def shard_names(index_path: str) -> list[str]:
    """The shard files an index's weight_map names, sorted (an EngineError for an index that is not
    one). Bounded JSON: the file is at most MAX_INDEX_BYTES, and CPython's decoder raises
    RecursionError on a deep nest rather than crash."""
    path = Path(index_path)
    if path.stat().st_size > MAX_INDEX_BYTES:
        raise EngineError(f"The weight index {path.name} is {path.stat().st_size:,} bytes; none over "
                          f"{MAX_INDEX_BYTES:,} is read")
    try:
        index = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:
        raise EngineError(f"The weight index {path.name} is not valid JSON: {type(exc).__name__}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
        raise EngineError(f"The weight index {path.name} has no weight_map of tensor names to file names")
    return sorted(set(weight_map.values()))


def _weight_files(resolved, token, timeout_s, read_index) -> WeightFiles:
    from huggingface_hub import HfApi

    info = HfApi().model_info(resolved.location, revision=resolved.revision, files_metadata=True, token=token,
                              timeout=timeout_s)
    revision = resolved.revision or info.sha
    sizes = {sibling.rfilename: sibling.size for sibling in info.siblings or ()}
    chosen = _explicit_weights(resolved, revision, token, timeout_s)
    if chosen is None:
        chosen = next((name for name in (SAFETENSORS, SAFETENSORS_INDEX, PYTORCH, PYTORCH_INDEX) if name in sizes), None)
    if chosen is None or chosen not in sizes:
        raise EngineError(f"Model '{resolved.name}' on the hub has no {chosen or f'{SAFETENSORS} or {PYTORCH}'} "
                          "at its commit: there are no weights to load")
    names = [chosen]
    if chosen.endswith(".index.json"):
        index_path = _download_index(resolved, chosen, sizes[chosen], revision, token, timeout_s)
        shards = read_index(index_path)
        missing = [name for name in shards if name not in sizes or ".." in PurePosixPath(name).parts]
        if missing:
            raise EngineError(f"The weight index {chosen} of '{resolved.name}' names files the repository does not "
                              f"have: {', '.join(missing[:3])}")
        names += shards
    unsized = [name for name in names if sizes[name] is None]
    if unsized:
        raise EngineError(f"The hub gave no size for {unsized[0]} of '{resolved.name}', so its download cannot be "
                          "checked before it is made")
    return WeightFiles(model=resolved.name, revision=revision, sizes={name: sizes[name] for name in names},
                       cached=frozenset(name for name in names if _cached(resolved.location, name, revision)))


def _explicit_weights(resolved, revision, token, timeout_s) -> str | None:
    """The file config.json's `transformers_weights` names (transformers loads that one), read
    from the cache resolve_model downloaded config.json into."""
    from huggingface_hub import hf_hub_download

    return _named_weights(hf_hub_download(resolved.location, "config.json", revision=revision, token=token,
                                          etag_timeout=timeout_s))


def _named_weights(config_path: str) -> str | None:
    """config.json's transformers_weights (None when it names none, or cannot be read: load_config
    says what is wrong with it)."""
    path = Path(config_path)
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise EngineError(f"The config.json at {path} is larger than {MAX_CONFIG_BYTES:,} bytes")
    try:
        config = json.loads(path.read_bytes())
    except (ValueError, RecursionError):
        return None
    named = config.get("transformers_weights") if isinstance(config, dict) else None
    return named if isinstance(named, str) else None


def _download_index(resolved, name: str, size: int | None, revision, token, timeout_s) -> str:
    from huggingface_hub import hf_hub_download

    if size is None or size > MAX_INDEX_BYTES:
        raise EngineError(f"The weight index {name} of '{resolved.name}' is {size if size is not None else 'of unknown'}"
                          f" bytes on the hub; this server reads none over {MAX_INDEX_BYTES:,}")
    return hf_hub_download(resolved.location, name, revision=revision, token=token, etag_timeout=timeout_s)


def _cached(repo_id: str, name: str, revision) -> bool:
    return _cached_path(repo_id, name, revision) is not None


def _cached_path(repo_id: str, name: str, revision) -> str | None:
    """The file in the hub cache at `revision`, or None (not there, or known to be absent)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, name, revision=revision)
    return found if isinstance(found, str) and os.path.isfile(found) else None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""
