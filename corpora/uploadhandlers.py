"""Refuse an oversized upload while it streams in (OWASP file-upload guidance), not after it has
been received: the declared length is checked first, then every chunk as it arrives."""
from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler

from mistudio.errors import ServiceError

# Multipart framing around the file: headers and boundaries are a few hundred bytes.
_MULTIPART_OVERHEAD_BYTES = 64 * 1024


class UploadTooLarge(ServiceError):
    status_code = 413


def _too_large():
    return UploadTooLarge(
        f"The file is larger than the limit of {settings.CORPUS_MAX_BYTES} bytes (MISTUDIO_CORPUS_MAX_BYTES)."
    )


class SizeLimitUploadHandler(FileUploadHandler):
    """First in FILE_UPLOAD_HANDLERS: counts bytes and passes them on to the handler that stores them."""

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        if content_length and content_length > settings.CORPUS_MAX_BYTES + _MULTIPART_OVERHEAD_BYTES:
            raise _too_large()
        self.received = 0

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        self.received = 0

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > settings.CORPUS_MAX_BYTES:
            raise _too_large()
        return raw_data

    def file_complete(self, file_size):
        return None
