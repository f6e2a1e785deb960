"""A file or folder the engine writes is whole under its final name or absent: a write that fails
leaves the older one (if any) and no partial behind."""
import pytest

from engine.files import AtomicFile, AtomicFolder


class Crash(Exception):
    pass


def test_a_file_appears_under_its_name_only_once_written(tmp_path):
    path = tmp_path / "sae.pt"
    with AtomicFile(path) as partial:
        partial.write_bytes(b"weights")
        assert partial.name == "sae.pt.partial" and not path.exists()
    assert path.read_bytes() == b"weights"
    assert not partial.exists()


def test_a_failed_write_keeps_the_older_file_and_no_partial(tmp_path):
    path = tmp_path / "sae.pt"
    path.write_bytes(b"old")
    with pytest.raises(Crash), AtomicFile(path) as partial:
        partial.write_bytes(b"half")
        raise Crash
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]


def test_a_file_committed_by_hand_or_discarded(tmp_path):
    kept, dropped = AtomicFile(tmp_path / "kept.npy"), AtomicFile(tmp_path / "dropped.npy")
    kept.partial.write_bytes(b"rows")
    dropped.partial.write_bytes(b"rows")
    kept.commit()
    dropped.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.npy"]


def test_a_folder_replaces_the_older_one_whole(tmp_path):
    folder = tmp_path / "features"
    folder.mkdir()
    (folder / "stale.npy").write_bytes(b"old")
    with AtomicFolder(folder) as partial:
        (partial / "meta.json").write_text("{}")
    assert [p.name for p in folder.iterdir()] == ["meta.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["features"]


def test_a_failed_folder_keeps_the_older_one_and_a_stale_partial_is_cleared(tmp_path):
    folder = tmp_path / "features"
    folder.mkdir()
    (folder / "meta.json").write_text("old")
    (tmp_path / "features.partial").mkdir()
    (tmp_path / "features.partial" / "left-by-a-crash.npy").write_bytes(b"")
    with pytest.raises(Crash), AtomicFolder(folder) as partial:
        assert list(partial.iterdir()) == []
        (partial / "meta.json").write_text("half")
        raise Crash
    assert (folder / "meta.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["features"]


def test_two_writers_of_one_file_never_share_a_partial_and_the_newer_wins(tmp_path):
    """A paused run of a job wakes while the run that took the job over extracts into the same
    cache (engine.activations.extract): the newer writer's start removes the older's partial, the older's
    writes and its discard never touch the newer's, and the older cannot put its file in place."""
    path = tmp_path / "job_activations.npy"
    (tmp_path / "job_activations.npy.partial").write_bytes(b"a killed run's")
    stale = AtomicFile(path, own=True)
    stale.partial.write_bytes(b"stale rows")
    owner = AtomicFile(path, own=True)
    assert not stale.partial.exists() and not (tmp_path / "job_activations.npy.partial").exists()
    owner.partial.write_bytes(b"owner rows")
    stale.discard()
    with pytest.raises(FileNotFoundError):
        stale.commit()
    owner.commit()
    assert path.read_bytes() == b"owner rows"
    assert list(tmp_path.iterdir()) == [path]
