from rest_framework import serializers


class UploadRequestSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="UTF-8 text, one training sequence per line")


class UploadResponseSerializer(serializers.Serializer):
    message = serializers.CharField()
    filename = serializers.CharField()
    size_bytes = serializers.IntegerField()
    lines_count = serializers.IntegerField()
    path = serializers.CharField()
