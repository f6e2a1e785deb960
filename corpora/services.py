"""Adding corpora: the one path the API, the admin and the CLI all take."""
import re
import shutil
import uuid
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction

from corpora.models import Corpus
from corpora.quotas import upload_limit
from corpora.upload_checks import byte_check
from engine.text.corpus import SUFFIXES, CorpusScan, corpus_format
from engine.errors import CorpusError
from mistudio.errors import Conflict, ServiceError
from mistudio.sandbox import SandboxError, SandboxRefused, run_limited

_MIN_TEXT_CAP_BYTES = 16 << 20
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,199}$")
_SAFE_FIELD = re.compile(r"^[^\x00-\x1f]{1,200}$")


def corpora_dir() -> Path:
    path = settings.DATA_DIR / "samples"
    path.mkdir(parents=True, exist_ok=True)
    return path


def validate_corpus_name(name: str) -> str:
    """The client's name is for display only, but a name that tries to leave the folder is refused
    outright rather than quietly rewritten: the user should know what they sent was wrong."""
    name = (name or "").strip()
    if not name:
        raise ServiceError("The file has no name: send it as multipart form field 'file' with a filename.")
    if "/" in name or "\\" in name or name in (".", "..") or ".." in name.split("."):
        raise ServiceError(
            f"File name {name!r} is not allowed: send a plain file name without folders or '..'."
        )
    if not _SAFE_NAME.match(name):
        raise ServiceError(
            f"File name {name!r} is not allowed: use letters, digits, '.', '_', '-' and spaces, "
            "starting with a letter or digit, at most 200 characters."
        )
    return name


def validate_text_field(text_field: str | None) -> str:
    text_field = "text" if text_field is None or text_field == "" else text_field
    if not (isinstance(text_field, str) and _SAFE_FIELD.match(text_field) and text_field.strip()):
        raise ServiceError("text_field: name the column that holds the text, at most 200 characters.")
    return text_field


def corpus_add(*, owner, name: str, chunks=None, folder: Path | None = None, text_field: str = "text") -> Corpus:
    """Store a corpus and record it: `chunks` (bytes, streamed in and checked as they arrive: the
    size limit and what the format's bytes must look like) or a dataset `folder` (copied). Stored
    under a partial name, it is read through once by engine.text.corpus.scan_corpus; nothing is kept
    unless every check passes. The stored file keeps its suffix: the engine reads the format by it."""
    if (chunks is None) == (folder is None):
        raise TypeError("corpus_add takes chunks or a folder, one of the two")
    name = validate_corpus_name(name)
    text_field = validate_text_field(text_field)
    if Corpus.objects.filter(owner=owner, name=name).exists():
        raise Conflict(
            f"A corpus named {name!r} already exists: delete it in the admin or upload under another name."
        )
    stem = uuid.uuid4().hex
    suffix = "" if folder is not None else Path(name).suffix.lower()
    if folder is None and suffix not in SUFFIXES:
        raise ServiceError(
            f"{name!r} is not a corpus format miStudio reads: upload .txt, .jsonl (or .ndjson), .parquet, "
            ".csv or .arrow (a datasets save_to_disk folder: manage.py add_corpus)."
        )
    storage = corpora_dir() / f"{stem}{suffix}"
    partial = corpora_dir() / f"{stem}.part{suffix}"
    partial_uploads_remove_stale()
    # The size limit, the owner's storage quota and the free disk: refused before the disk fills.
    limit = upload_limit(owner)
    try:
        size = (_copy_folder(folder, partial, name, limit) if folder is not None
                else _store_chunks(chunks, partial, name, limit))
        scan = _scan(partial, name, text_field, size)
        partial.rename(storage)
        try:
            with transaction.atomic():
                return Corpus.objects.create(
                    owner=owner, name=name, path=str(storage), format=scan.format, text_field=text_field,
                    size_bytes=size, lines_count=scan.lines, documents_count=scan.documents,
                    text_bytes=scan.text_bytes,
                )
        except IntegrityError:
            _remove(storage)
            raise Conflict(f"A corpus named {name!r} already exists: upload under another name.") from None
    finally:
        _remove(partial)


def _scan(partial: Path, name: str, text_field: str, size: int) -> CorpusScan:
    """engine.text.corpus.scan_corpus in a child process with limits (mistudio.sandbox): a forged or
    oversized file costs that process, never this one. Its text may be at most
    MISTUDIO_CORPUS_MAX_TEXT_RATIO times its stored size (16 MiB at least): a compressed or
    dictionary-encoded file is refused before it decodes to gigabytes."""
    max_text_bytes = max(_MIN_TEXT_CAP_BYTES, size * settings.CORPUS_MAX_TEXT_RATIO)
    try:
        return CorpusScan(**run_limited("engine.text.corpus:scan_summary", str(partial), text_field, max_text_bytes,
                                        expected=("CorpusError",), what=repr(name)))
    except SandboxError as err:
        # The engine names the file it read: the user knows it by their name for it.
        raise ServiceError(str(err).replace(partial.name, name)) from None
    except SandboxRefused as err:
        raise ServiceError(f"{name!r} was refused: {err}.") from None


def _store_chunks(chunks, partial: Path, name: str, limit) -> int:
    check = byte_check(name, corpus_format(partial))
    size = 0
    with open(partial, "wb") as out:
        for chunk in chunks:
            if not chunk:
                continue
            if size + len(chunk) > limit.max_bytes:
                raise limit.refusal(repr(name))
            check.feed(chunk, size)
            size += len(chunk)
            out.write(chunk)
    if size == 0:
        raise ServiceError(f"{name!r} is empty: upload a corpus with text in it.")
    check.finish()
    return size


def _copy_folder(folder: Path, partial: Path, name: str, limit) -> int:
    try:
        corpus_format(folder)  # a saved dataset, not a DatasetDict or any folder: before copying it
    except CorpusError as err:
        raise ServiceError(str(err)) from None
    # Links are refused, not followed: a link would copy whatever it points at on this machine.
    links = [path for path in (folder, *folder.rglob("*")) if path.is_symlink()]
    if links:
        raise ServiceError(f"{name!r} holds a symbolic link ({links[0].relative_to(folder.parent)}): copy the dataset "
                           "without links (its files themselves) and add that folder.")
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    if size > limit.max_bytes:
        raise limit.refusal(repr(name), size)
    # Copies of the data, not of the source's modes (copytree's default copies those, and 0644 files
    # stayed readable to every account once their folder was): new files take the process's mask
    # (0600), and the folders copytree gives the source's mode are made 0700.
    shutil.copytree(folder, partial, copy_function=shutil.copyfile)
    for path in (partial, *partial.rglob("*")):
        if path.is_dir():
            path.chmod(0o700)
    return size


def partial_uploads_remove_stale() -> list[str]:
    """Remove the partial files of uploads whose process died while storing or reading them (a
    killed request's `finally` never ran): those untouched for MISTUDIO_PARTIAL_UPLOAD_STALE_S.
    Run by every upload, by each worker as it starts and by its watchdog. The names removed."""
    import time

    folder = corpora_dir()
    if not folder.is_dir():
        return []
    cutoff = time.time() - settings.PARTIAL_UPLOAD_STALE_S
    removed = []
    for path in folder.glob("*.part*"):
        try:
            stale = path.lstat().st_mtime < cutoff
        except FileNotFoundError:
            continue
        if stale:
            _remove(path)
            removed.append(path.name)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def corpus_add_from_path(*, owner, path: Path, name: str | None = None, text_field: str = "text") -> Corpus:
    """A file, or a folder written by `datasets.Dataset.save_to_disk` (copied as a folder)."""
    path = Path(path)
    if path.is_dir():
        return corpus_add(owner=owner, name=name or path.name, folder=path, text_field=text_field)
    if not path.is_file():
        raise ServiceError(f"Corpus file {str(path)!r} does not exist.")

    def chunks():
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                yield chunk

    return corpus_add(owner=owner, name=name or path.name, chunks=chunks(), text_field=text_field)


def corpus_delete(corpus: Corpus) -> None:
    if corpus.jobs.exists():
        raise Conflict(f"Corpus {corpus.name!r} is used by training jobs and cannot be deleted.")
    _remove(Path(corpus.path))
    corpus.delete()
