"""Adding corpora: the one path the API, the admin and the CLI all take."""
import codecs
import re
import uuid
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction

from corpora.models import Corpus
from mistudio.errors import Conflict, ServiceError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,199}$")


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


def corpus_add(*, owner, name: str, chunks) -> Corpus:
    """Stream `chunks` (bytes) into the corpus folder, checking as it goes that the text is UTF-8,
    not binary and under the size limit; nothing is kept unless every check passes."""
    name = validate_corpus_name(name)
    if Corpus.objects.filter(owner=owner, name=name).exists():
        raise Conflict(
            f"A corpus named {name!r} already exists: delete it in the admin or upload under another name."
        )
    storage = corpora_dir() / f"{uuid.uuid4().hex}.txt"
    partial = storage.with_suffix(".part")
    decoder = codecs.getincrementaldecoder("utf-8")()
    size = lines = 0
    has_text = False
    last_byte = b""
    try:
        with open(partial, "wb") as out:
            for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if size > settings.CORPUS_MAX_BYTES:
                    raise ServiceError(
                        f"{name!r} is larger than the limit of {settings.CORPUS_MAX_BYTES} bytes "
                        "(MISTUDIO_CORPUS_MAX_BYTES)."
                    )
                if b"\x00" in chunk:
                    raise ServiceError(f"{name!r} looks binary (it contains NUL bytes): upload a UTF-8 text file.")
                try:
                    text = decoder.decode(chunk)
                except UnicodeDecodeError as err:
                    raise ServiceError(
                        f"{name!r} is not valid UTF-8 (byte offset {size - len(chunk) + err.start}): "
                        "save it as UTF-8 text and upload again."
                    ) from None
                has_text = has_text or bool(text.strip())
                lines += chunk.count(b"\n")
                last_byte = chunk[-1:]
                out.write(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ServiceError(f"{name!r} ends in the middle of a UTF-8 character: it is truncated or not UTF-8.") from None
        if size == 0:
            raise ServiceError(f"{name!r} is empty: upload a text file with one training sequence per line.")
        if not has_text:
            raise ServiceError(f"{name!r} holds only whitespace: upload a text file with one training sequence per line.")
        if last_byte != b"\n":
            lines += 1
        partial.rename(storage)
        try:
            with transaction.atomic():
                return Corpus.objects.create(
                    owner=owner, name=name, path=str(storage), size_bytes=size, lines_count=lines
                )
        except IntegrityError:
            storage.unlink(missing_ok=True)
            raise Conflict(f"A corpus named {name!r} already exists: upload under another name.") from None
    finally:
        partial.unlink(missing_ok=True)


def corpus_add_from_path(*, owner, path: Path, name: str | None = None) -> Corpus:
    path = Path(path)
    if not path.is_file():
        raise ServiceError(f"Corpus file {str(path)!r} does not exist.")

    def chunks():
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                yield chunk

    return corpus_add(owner=owner, name=name or path.name, chunks=chunks())


def corpus_delete(corpus: Corpus) -> None:
    if corpus.jobs.exists():
        raise Conflict(f"Corpus {corpus.name!r} is used by training jobs and cannot be deleted.")
    Path(corpus.path).unlink(missing_ok=True)
    corpus.delete()
