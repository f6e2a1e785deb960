from django.conf import settings
from django.db import models


class Corpus(models.Model):
    """An uploaded UTF-8 text file; each non-empty line is one training sequence."""

    # The client's file name, sanitized: what users type as `corpus_file`. Display only; the file
    # on disk has a server-generated name.
    name = models.CharField(max_length=200)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="corpora"
    )
    path = models.CharField(max_length=1024, help_text="Absolute path of the stored file.")
    size_bytes = models.BigIntegerField()
    lines_count = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "corpora"
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="unique_corpus_name_per_owner")]

    def __str__(self):
        return self.name
