"""Multipart parsing that refuses, rather than silently rewrites, a file name with folders in it.

Django strips '../../x.txt' down to 'x.txt'; a user who sent that should hear that it was wrong."""
import html

from django.core.files.uploadhandler import FileUploadHandler
from django.http.multipartparser import MultiPartParser as DjangoMultiPartParser
from django.http.multipartparser import MultiPartParserError
from rest_framework.exceptions import ParseError
from rest_framework.parsers import DataAndFiles, MultiPartParser

from corpora.services import validate_corpus_name


class _StrictFileNames(DjangoMultiPartParser):
    def sanitize_file_name(self, file_name):
        validate_corpus_name(html.unescape(file_name))
        return super().sanitize_file_name(file_name)


class StrictFileNameUploadHandler(FileUploadHandler):
    """For a Django view (the admin's corpus upload), first in `request.upload_handlers`: it parses
    the body itself, with the API's strict names, and hands the file data to the handlers after it.
    It must be in place before anything reads `request.POST` (the CSRF middleware does)."""

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        others = [handler for handler in self.request.upload_handlers if handler is not self]
        return _StrictFileNames(META, input_data, others, encoding).parse()

    def receive_data_chunk(self, raw_data, start):
        return raw_data

    def file_complete(self, file_size):
        return None


class CorpusUploadParser(MultiPartParser):
    def parse(self, stream, media_type=None, parser_context=None):
        request = parser_context["request"]
        meta = request.META.copy()
        meta["CONTENT_TYPE"] = media_type
        encoding = parser_context.get("encoding") or "utf-8"
        try:
            data, files = _StrictFileNames(meta, stream, request.upload_handlers, encoding).parse()
        except MultiPartParserError as exc:
            raise ParseError(f"Multipart form parse error - {exc}") from None
        return DataAndFiles(data, files)
