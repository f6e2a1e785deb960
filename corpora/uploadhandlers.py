"""Refuse an oversized upload while it streams in (OWASP file-upload guidance), not after it has
been received: the declared length is checked first, then every chunk as it arrives. Oversized is
past the smallest of the limits corpora.quotas.upload_limit finds for the user: the corpus size
limit, what their storage quota leaves, and the free disk less its reserve."""
from django.core.files.uploadhandler import FileUploadHandler

from corpora.quotas import StorageFull, upload_limit

# Multipart framing around the file: headers and boundaries are a few hundred bytes.
_MULTIPART_OVERHEAD_BYTES = 64 * 1024


class UploadTooLarge(StorageFull):
    status_code = 413


class SizeLimitUploadHandler(FileUploadHandler):
    """First in FILE_UPLOAD_HANDLERS: counts bytes and passes them on to the handler that stores them."""

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        # The request's user is known here: Django's middleware or DRF's authentication set it
        # before anything reads the body.
        self.limit = upload_limit(getattr(self.request, "user", None))
        if content_length and content_length > self.limit.max_bytes + _MULTIPART_OVERHEAD_BYTES:
            raise self._too_large()
        self.received = 0

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        self.received = 0

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.limit.max_bytes:
            raise self._too_large()
        return raw_data

    def file_complete(self, file_size):
        return None

    def _too_large(self) -> UploadTooLarge:
        return UploadTooLarge(self.limit.refusal("The file").message)
