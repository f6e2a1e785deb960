from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from corpora.parsers import CorpusUploadParser
from corpora.serializers import UploadRequestSerializer, UploadResponseSerializer
from corpora.services import corpus_add
from mistudio.errors import ErrorSerializer, ServiceError


class UploadView(APIView):
    throttle_scope = "expensive"  # mistudio.throttles
    parser_classes = [CorpusUploadParser]

    @extend_schema(request={"multipart/form-data": UploadRequestSerializer},
                   responses={200: UploadResponseSerializer, 400: ErrorSerializer, 409: ErrorSerializer,
                              413: ErrorSerializer},
                   summary="Upload a corpus: text, JSON lines, Parquet, CSV or Arrow")
    def post(self, request):
        upload = request.FILES.get("file")
        if upload is None:
            raise ServiceError("file: send the corpus as multipart form field 'file'.")
        corpus = corpus_add(owner=request.user, name=upload.name, chunks=upload.chunks(),
                            text_field=request.data.get("text_field", "text"))
        return Response({
            "message": "File uploaded successfully",
            "filename": corpus.name,
            "size_bytes": corpus.size_bytes,
            "lines_count": corpus.lines_count,
            "path": corpus.path,
            "documents_count": corpus.documents_count,
            "format": corpus.format,
            "text_field": corpus.text_field,
        })
