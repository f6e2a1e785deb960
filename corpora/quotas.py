"""What a user may store: their corpora plus what other apps register as theirs (training registers
its jobs' artifacts), against MISTUDIO_STORAGE_QUOTA_BYTES; and the most their next upload may
take, the smallest of the corpus size limit, what their quota leaves and the data folder's free
disk less MISTUDIO_DISK_RESERVE_BYTES (the embedded database lives on that disk too). Staff are
exempt from the quota, never from the reserve."""
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Sum
from django.utils.module_loading import import_string

from corpora.models import Corpus
from engine import disk
from mistudio.errors import ServiceError

# Dotted paths of functions user -> bytes that user's other files take (training.admission.quotas).
_COUNTERS: list[str] = []


class StorageFull(ServiceError):
    """An upload that would pass the user's quota or fill the disk: 413, as a body too large is."""

    status_code = 413


def storage_counter_register(path: str) -> None:
    """Count the bytes the function at `path` (user -> int) says are the user's in their storage."""
    if path not in _COUNTERS:
        _COUNTERS.append(path)


def quota_applies(user) -> bool:
    """A quota is set and `user` is someone it binds: logged in (a multipart body sent anonymously,
    to the login page say, stores nothing and is held to the other limits), not staff."""
    return (bool(settings.STORAGE_QUOTA_BYTES) and getattr(user, "is_authenticated", False)
            and not getattr(user, "is_staff", False))


def storage_used_bytes(user) -> int:
    """The user's corpora as stored, plus every registered counter's bytes for them."""
    corpora = Corpus.objects.filter(owner=user).aggregate(total=Sum("size_bytes"))["total"] or 0
    return corpora + sum(import_string(path)(user) for path in _COUNTERS)


@dataclass(frozen=True)
class UploadLimit:
    """The most bytes the next upload may be, and why that much: said when a file goes past it."""

    max_bytes: int
    reason: str

    def refusal(self, name: str, size: int | None = None) -> StorageFull:
        size = f" ({disk.size_text(size)})" if size is not None else ""
        return StorageFull(f"{name}{size} is larger than {self.reason}.")


def upload_limit(user) -> UploadLimit:
    """The smallest of the limits that apply to `user`'s next upload."""
    limits = [UploadLimit(settings.CORPUS_MAX_BYTES,
                          f"the limit of {settings.CORPUS_MAX_BYTES} bytes (MISTUDIO_CORPUS_MAX_BYTES)")]
    if quota_applies(user):
        used, quota = storage_used_bytes(user), settings.STORAGE_QUOTA_BYTES
        limits.append(UploadLimit(
            max(0, quota - used),
            f"what your storage quota leaves: you use {disk.size_text(used)} of {disk.size_text(quota)} "
            "(MISTUDIO_STORAGE_QUOTA_BYTES, corpora and jobs' artifacts together); delete corpora or old jobs' "
            "artifacts to make room, or ask an administrator for more"))
    free, reserve = disk.free_bytes(settings.DATA_DIR), settings.DISK_RESERVE_BYTES
    limits.append(UploadLimit(
        max(0, free - reserve),
        f"the server's free disk allows: {disk.size_text(free)} free, of which {disk.size_text(reserve)} is kept "
        "in reserve (MISTUDIO_DISK_RESERVE_BYTES); ask an administrator to free disk space"))
    return min(limits, key=lambda limit: limit.max_bytes)
