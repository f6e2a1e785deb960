"""A dataset folder written by `datasets.Dataset.save_to_disk` cannot be one multipart file: it is
added from its path, by corpus_add_from_path and `manage.py add_corpus`, copied whole into the
corpus storage, checked as an upload is, and deleted whole."""
import json
import os
import stat
from pathlib import Path

import datasets
import pytest
from django.core.management import CommandError, call_command

from corpora.models import Corpus
from corpora.services import corpus_add_from_path, corpus_delete
from engine.text.corpus import iter_documents
from mistudio.errors import ServiceError

pytestmark = pytest.mark.django_db

TEXTS = ["The first document.", None, "The second\nwith two lines.", "Third."]


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "reviews-train"
    datasets.Dataset.from_dict({"label": [0, 1, 0, 1], "review": TEXTS}).save_to_disk(str(folder), num_shards=2)
    return folder


@pytest.mark.slow
def test_a_dataset_folder_is_copied_into_the_storage_and_counted(saved, alice, data_dir):
    corpus = corpus_add_from_path(owner=alice, path=saved, text_field="review")
    stored = Path(corpus.path)
    assert stored.is_dir() and stored.parent == data_dir / "samples" and stored != saved
    assert (corpus.name, corpus.format, corpus.text_field) == ("reviews-train", "dataset", "review")
    assert (corpus.documents_count, corpus.lines_count) == (3, 4)
    assert corpus.size_bytes == sum(path.stat().st_size for path in saved.rglob("*") if path.is_file())
    assert list(iter_documents(stored, text_field="review")) == [text for text in TEXTS if text]


@pytest.mark.slow
def test_the_copy_is_private_whatever_the_sources_modes(saved, alice):
    for path in (saved, *saved.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    previous = os.umask(0o077)  # every miStudio process's (mistudio/settings.py)
    try:
        stored = Path(corpus_add_from_path(owner=alice, path=saved, text_field="review").path)
    finally:
        os.umask(previous)
    modes = {str(path.relative_to(stored)): oct(stat.S_IMODE(path.stat().st_mode)) for path in (stored, *stored.rglob("*"))}
    assert {name: mode for name, mode in modes.items() if mode != ("0o700" if (stored / name).is_dir() else "0o600")} == {}
    assert len(modes) > 3  # the folder, its shards and dataset files


def test_a_folder_with_no_such_column_is_refused_by_its_name_and_nothing_is_kept(saved, alice, data_dir):
    with pytest.raises(ServiceError) as refused:
        corpus_add_from_path(owner=alice, path=saved)
    assert refused.value.message == (
        "No column 'text' in reviews-train: its columns are 'label', 'review'; send text_field=review"
    )
    assert not Corpus.objects.exists() and not any((data_dir / "samples").iterdir())


def test_a_dataset_dict_folder_says_to_point_at_one_split(tmp_path, alice):
    split = datasets.Dataset.from_dict({"text": ["a"]})
    datasets.DatasetDict({"train": split}).save_to_disk(str(tmp_path / "all"))
    with pytest.raises(ServiceError, match="point at one split's folder, e.g. 'all/train'"):
        corpus_add_from_path(owner=alice, path=tmp_path / "all")


def test_a_folder_over_the_size_limit_is_refused_before_it_is_copied(saved, alice, settings, data_dir):
    settings.CORPUS_MAX_BYTES = 100
    with pytest.raises(ServiceError, match="MISTUDIO_CORPUS_MAX_BYTES"):
        corpus_add_from_path(owner=alice, path=saved, text_field="review")
    assert not any((data_dir / "samples").iterdir())


def test_deleting_a_dataset_corpus_removes_its_folder(saved, alice):
    corpus = corpus_add_from_path(owner=alice, path=saved, text_field="review")
    corpus_delete(corpus)
    assert not Path(corpus.path).exists() and not Corpus.objects.exists()


@pytest.mark.slow
def test_the_command_adds_a_folder_for_the_train_commands_user(saved, capsys):
    call_command("add_corpus", str(saved), "--text-field", "review", "--name", "reviews")
    corpus = Corpus.objects.get()
    assert (corpus.owner.username, corpus.name, corpus.format) == ("cli", "reviews", "dataset")
    assert "Corpus reviews (dataset): 3 documents, 4 lines" in capsys.readouterr().out


def test_the_command_adds_a_file_for_the_owner_named(tmp_path, alice):
    path = tmp_path / "notes.jsonl"
    path.write_text("".join(json.dumps({"body": text}) + "\n" for text in TEXTS), encoding="utf-8")
    call_command("add_corpus", str(path), "--text-field", "body", "--owner", "alice")
    corpus = Corpus.objects.get()
    assert (corpus.owner, corpus.format, corpus.documents_count) == (alice, "jsonl", 3)


def test_the_command_says_what_is_wrong_as_a_command_error(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text('{"body": "one"}\nnot json\n', encoding="utf-8")
    with pytest.raises(CommandError, match="Bad JSON at line 2 of 'notes.jsonl'"):
        call_command("add_corpus", str(path), "--text-field", "body")
    assert not Corpus.objects.exists()


def test_a_dataset_folder_holding_a_link_is_refused_and_nothing_is_copied(saved, alice, tmp_path, data_dir):
    secret = tmp_path / "secret.txt"
    secret.write_text("the machine's own file")
    (saved / "notes.txt").symlink_to(secret)
    with pytest.raises(ServiceError, match=r"holds a symbolic link \(reviews-train/notes.txt\)"):
        corpus_add_from_path(owner=alice, path=saved, text_field="review")
    assert not Corpus.objects.exists()
    assert not [p for p in (data_dir / "samples").rglob("*") if p.is_file()]


def test_a_state_json_naming_a_shard_outside_the_folder_is_refused(saved, alice, tmp_path):
    state = json.loads((saved / "state.json").read_text())
    state["_data_files"][0]["filename"] = "../../elsewhere.arrow"
    (saved / "state.json").write_text(json.dumps(state))
    with pytest.raises(ServiceError, match="names a shard outside the folder"):
        corpus_add_from_path(owner=alice, path=saved, text_field="review")
    assert not Corpus.objects.exists()
