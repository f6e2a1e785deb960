"""Reading a text corpus: one sequence per non-empty line."""

from pathlib import Path

from engine.errors import CorpusError


def read_corpus(path: Path) -> list[str]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CorpusError(f"Corpus file '{path.name}' does not exist") from None
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"Corpus '{path.name}' is not valid UTF-8 (byte {exc.start}): save it as UTF-8 text"
        ) from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise CorpusError(f"Corpus '{path.name}' has no non-empty lines")
    return lines
