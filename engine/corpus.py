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


def iter_documents(path: Path, *, text_field: str = "text", start: int = 0):
    """TEMPORARY (replaced by the corpus-formats branch at merge): txt lines and JSONL only."""
    import json
    import itertools

    path = Path(path)
    if path.suffix == ".jsonl":
        def gen():
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        value = json.loads(line).get(text_field)
                        if value and value.strip():
                            yield value
    else:
        def gen():
            yield from read_corpus(path)
    return itertools.islice(gen(), start, None)


def default_packing(fmt: str) -> str:
    return "lines" if fmt == "txt" else "concat"


def corpus_format(path: Path) -> str:
    return {".jsonl": "jsonl"}.get(Path(path).suffix, "txt")
