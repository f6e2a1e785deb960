from django.conf import settings
from django.db import models

from engine.text.corpus import FORMATS


class Corpus(models.Model):
    """An uploaded corpus: a UTF-8 text file (each non-empty line one training sequence) or a dataset
    (JSON lines, Parquet, CSV, Arrow, a `datasets` folder) whose `text_field` holds one document a row."""

    # The client's file name, sanitized: what users type as `corpus_file`. Display only; the file
    # on disk has a server-generated name.
    name = models.CharField(max_length=200)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="corpora"
    )
    path = models.CharField(max_length=1024, help_text="Absolute path of the stored file or dataset folder.")
    # engine.text.corpus decides the format by the stored file's suffix; kept here to show and answer it.
    format = models.CharField(max_length=16, choices=[(fmt, fmt) for fmt in FORMATS], default="txt")
    text_field = models.CharField(max_length=200, default="text", help_text="The column holding the text.")
    size_bytes = models.BigIntegerField()
    lines_count = models.BigIntegerField(help_text="Non-empty lines over all documents.")
    documents_count = models.BigIntegerField()
    text_bytes = models.BigIntegerField(help_text="UTF-8 bytes of all documents' text.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "corpora"
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="unique_corpus_name_per_owner")]

    def __str__(self):
        return self.name
