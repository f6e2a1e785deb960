"""Downloads of a finished job's artifacts: which file each artifact is, whether it can be sent,
and the SAELens folder as one archive written while it is sent.

Paths come only from the job's row (model_path, metadata_path, exports["saelens"]), never from
the request: the request names an artifact, and an unknown name is refused before any path is
looked at, so no query can reach another file.

The folder is sent as a .zip of stored (uncompressed) entries: the weights are float tensors that
deflate or gzip shrink by a few percent at best, for seconds of the web process's CPU on a large
SAE; a zip opens anywhere (Windows' Explorer, macOS, `unzip`, Python's zipfile), and Python's
zipfile writes one to a stream it cannot seek (sizes and CRCs go after each entry's data), so the
archive is made a chunk at a time while it is sent and never exists whole, in memory or on disk.
"""
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from mistudio.errors import Conflict, NotFound, ServiceError
from training.models import TrainingJob
from training.artifacts import layout
from training.artifacts.retention import check_not_purged

# Bytes read from a file, and so at most sent, per chunk of the archive. A module constant so a
# test can make it small and see a folder go out in many chunks.
ARCHIVE_CHUNK_BYTES = 1024 * 1024

# What a SAELens loader needs of the folder (SAE.load_from_disk reads these two); the sparsity
# file and anything else the export wrote come along when they are there.
SAELENS_REQUIRED = ("cfg.json", "sae_weights.safetensors")


class Gone(ServiceError):
    """The job made the artifact, but its file is no longer on disk (deleted since)."""

    status_code = 410


@dataclass(frozen=True)
class Artifact:
    name: str  # the query's `artifact=` value
    label: str  # what the job page calls it
    filename_suffix: str  # the download is named f"{job.id}{filename_suffix}"
    content_type: str
    path_of: Callable[[TrainingJob], str]
    is_folder: bool = False


ARTIFACTS = {
    artifact.name: artifact for artifact in (
        Artifact("saelens", "SAELens folder (.zip)", layout.SAELENS_DOWNLOAD_SUFFIX, "application/zip",
                 lambda job: (job.exports or {}).get("saelens") or "", is_folder=True),
        Artifact("weights", "SAE weights (.pt)", layout.WEIGHTS_DOWNLOAD_SUFFIX, "application/octet-stream", lambda job: job.model_path),
        Artifact("metadata", "Metadata (.json)", layout.METADATA_DOWNLOAD_SUFFIX, "application/json", lambda job: job.metadata_path),
    )
}
# A download with no `artifact=` is the SAELens folder: the one artifact that is the whole SAE
# in a format other tools load.
DEFAULT_ARTIFACT = "saelens"


@dataclass
class Download:
    """What to send: a file opened for reading (its size known), or an archive's chunks (not)."""

    filename: str
    content_type: str
    file: BinaryIO | None = None
    chunks: "FolderArchive | None" = None


def artifact_get(name: str | None) -> Artifact:
    """The artifact a request names; none named is the default."""
    name = DEFAULT_ARTIFACT if name is None else name
    if name not in ARTIFACTS:
        raise ServiceError(f"artifact must be one of {', '.join(ARTIFACTS)}, not {name!r} "
                           f"(without artifact= the download is {DEFAULT_ARTIFACT}).")
    return ARTIFACTS[name]


def artifact_download(job: TrainingJob, artifact: Artifact) -> Download:
    """The artifact of a finished job, opened: 409 while the job may still make it, 404 when the
    job never made it (it failed, or was cancelled before its SAE was saved), 410 when it made it
    and the file has been deleted since. Files are opened here, before the first byte is sent, so
    one deleted during the download still arrives whole."""
    if not job.is_finished:
        raise Conflict(
            f"Job {job.id} is {job.status} ({job.progress:.0%} done); its {artifact.name} can be downloaded once it "
            f"finishes. Poll /api/v1/train/{job.id}/status."
        )
    check_not_purged(job, artifact.name)
    stored = artifact.path_of(job)
    if not stored:
        available = ", ".join(a.name for a in available_artifacts(job)) or "none"
        raise NotFound(f"Job {job.id} ({job.status}: {job.message or 'no message'}) made no {artifact.name}; "
                       f"what it has to download: {available}.")
    path = Path(stored)
    filename = f"{job.id}{artifact.filename_suffix}"
    try:
        if artifact.is_folder:
            return Download(filename, artifact.content_type, chunks=FolderArchive.open(path, root=layout.saelens_archive_root(job.id)))
        file = path.open("rb")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, _Incomplete) as err:
        raise Gone(f"Job {job.id}'s {artifact.name} ({path.name}) is no longer on disk{_what_is_missing(err)}: it was "
                   f"deleted after the job finished. Train a new job with its parameters to get another.") from None
    return Download(filename, artifact.content_type, file=file)


def available_artifacts(job: TrainingJob) -> list[Artifact]:
    """The artifacts a finished job can send now: made by it and still on disk (the job page
    links these)."""
    if not job.is_finished or job.artifacts_purged_at is not None:
        return []
    return [artifact for artifact in ARTIFACTS.values() if _on_disk(artifact, artifact.path_of(job))]


def _on_disk(artifact: Artifact, stored: str) -> bool:
    if not stored:
        return False
    path = Path(stored)
    if artifact.is_folder:
        return path.is_dir() and all((path / name).is_file() for name in SAELENS_REQUIRED)
    return path.is_file()


class _Incomplete(Exception):
    """A SAELens folder without a file its loader needs."""


def _what_is_missing(err: Exception) -> str:
    return f" whole (missing {err})" if isinstance(err, _Incomplete) else ""


class _Sink:
    """Where zipfile writes: it holds the bytes written since the last take(). It has no seek or
    tell, so zipfile streams (each entry's CRC and sizes after its data) and counts positions
    itself."""

    def __init__(self):
        self._parts = []

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self):
        pass

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


class FolderArchive:
    """The regular files at the top of a folder as a zip under one folder name (so it unpacks into
    one folder), produced a chunk at a time as it is iterated: at most ARCHIVE_CHUNK_BYTES of a
    file plus a header are held at once. Iterate it once; close() closes the files (Django's
    response calls it, whether it was iterated or not)."""

    def __init__(self, root: str, files: list[tuple[str, BinaryIO]]):
        self.root = root
        self.files = files

    @classmethod
    def open(cls, folder: Path, *, root: str) -> "FolderArchive":
        missing = [name for name in SAELENS_REQUIRED if not (folder / name).is_file()]
        if folder.is_dir() and missing:
            raise _Incomplete(", ".join(missing))
        # The export writes plain files only: a link or a sub-folder is none of its and stays out.
        paths = sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink())
        files = []
        try:
            for path in paths:
                files.append((path.name, path.open("rb")))
        except FileNotFoundError:
            for _, file in files:
                file.close()
            raise
        return cls(root, files)

    def __iter__(self):
        sink = _Sink()
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, file in self.files:
                with archive.open(_entry(f"{self.root}/{name}", file), "w") as entry:
                    while chunk := file.read(ARCHIVE_CHUNK_BYTES):
                        entry.write(chunk)
                        yield sink.take()
                yield sink.take()  # the entry's header, if it was empty, and its data descriptor
        yield sink.take()  # the central directory

    def close(self):
        for _, file in self.files:
            file.close()


def _entry(name: str, file: BinaryIO) -> zipfile.ZipInfo:
    """The zip entry of an open file, from the file itself (its path may be gone by now). Sized up
    front, so zipfile writes ZIP64 headers for an entry past 2 GiB."""
    stat = os.fstat(file.fileno())
    info = zipfile.ZipInfo(name, date_time=max(time.localtime(stat.st_mtime)[:6], (1980, 1, 1, 0, 0, 0)))
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = (stat.st_mode & 0xFFFF) << 16
    info.file_size = stat.st_size
    return info
