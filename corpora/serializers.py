from rest_framework import serializers

from engine.text.corpus import FORMATS


class UploadRequestSerializer(serializers.Serializer):
    file = serializers.FileField(
        help_text="The corpus, its format by its suffix: .txt (UTF-8 text, one training sequence per line), "
                  ".jsonl or .ndjson (one JSON object per line), .parquet, .csv, .arrow (Arrow IPC file or stream)"
    )
    text_field = serializers.CharField(
        required=False, default="text", max_length=200,
        help_text="The column (JSON field) holding each document's text; ignored for .txt",
    )


class UploadResponseSerializer(serializers.Serializer):
    message = serializers.CharField()
    filename = serializers.CharField()
    size_bytes = serializers.IntegerField(help_text="Bytes stored")
    lines_count = serializers.IntegerField(help_text="Non-empty lines over all documents")
    path = serializers.CharField()
    documents_count = serializers.IntegerField(
        help_text="Documents with text: a .txt file's non-empty lines, a dataset's non-null, non-blank rows"
    )
    format = serializers.ChoiceField(choices=FORMATS)
    text_field = serializers.CharField(help_text="The column the text was read from")
