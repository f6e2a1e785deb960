"""What an upload's bytes must look like as they arrive, by format: a wrong file is refused at its
first chunks rather than after it was stored whole. engine.text.corpus.scan_corpus checks the rest."""
import codecs

from mistudio.errors import ServiceError

# A Parquet file starts with PAR1; an Arrow IPC file with ARROW1, a stream (what `datasets` writes)
# with its first message: the continuation marker 0xFFFFFFFF, then the message's length.
_MAGIC = {"parquet": ((b"PAR1",), "a Parquet file"),
          "arrow": ((b"ARROW1", b"\xff\xff\xff\xff"), "an Arrow IPC file or stream")}


class TextCheck:
    """txt, jsonl, csv: UTF-8 throughout, no NUL bytes, some text that is not whitespace."""

    def __init__(self, name: str, fmt: str):
        self.name, self.fmt = name, fmt
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.has_text = False

    def feed(self, chunk: bytes, offset: int) -> None:
        if b"\x00" in chunk:
            raise ServiceError(f"{self.name!r} looks binary (it contains NUL bytes): upload a UTF-8 text file.")
        try:
            text = self.decoder.decode(chunk)
        except UnicodeDecodeError as err:
            raise ServiceError(
                f"{self.name!r} is not valid UTF-8 (byte offset {offset + err.start}): "
                "save it as UTF-8 text and upload again."
            ) from None
        self.has_text = self.has_text or bool(text.strip())

    def finish(self) -> None:
        try:
            self.decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ServiceError(
                f"{self.name!r} ends in the middle of a UTF-8 character: it is truncated or not UTF-8."
            ) from None
        if not self.has_text:
            what = "one training sequence per line" if self.fmt == "txt" else "one document per row"
            raise ServiceError(f"{self.name!r} holds only whitespace: upload a text file with {what}.")


class MagicCheck:
    """parquet, arrow: the file starts as its format does."""

    def __init__(self, name: str, fmt: str):
        self.name = name
        self.magics, self.kind = _MAGIC[fmt]
        self.head = b""
        self.needed = max(len(magic) for magic in self.magics)

    def feed(self, chunk: bytes, offset: int) -> None:
        if len(self.head) < self.needed:
            self.head += chunk[: self.needed - len(self.head)]
            if len(self.head) >= self.needed:
                self.finish()

    def finish(self) -> None:
        if not any(self.head.startswith(magic) for magic in self.magics):
            raise ServiceError(f"{self.name!r} is not {self.kind}: its first bytes are not the format's.")


def byte_check(name: str, fmt: str):
    return MagicCheck(name, fmt) if fmt in _MAGIC else TextCheck(name, fmt)
