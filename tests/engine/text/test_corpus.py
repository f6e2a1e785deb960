import pytest

from engine.text.corpus import read_corpus
from engine.errors import CorpusError


def test_each_non_empty_line_is_one_sequence(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("  first line \n\n\t\nsecond line\n", encoding="utf-8")
    assert read_corpus(path) == ["first line", "second line"]


def test_a_corpus_of_blank_lines_is_rejected_by_name(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("\n   \n\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="Corpus 'blank.txt' has no non-empty lines"):
        read_corpus(path)


def test_a_corpus_that_is_not_utf8_says_so(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(CorpusError, match="not valid UTF-8"):
        read_corpus(path)
