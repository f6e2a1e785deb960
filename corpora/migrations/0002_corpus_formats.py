from django.db import migrations, models
from django.db.models import F


def backfill_text_corpora(apps, schema_editor):
    # Every corpus before this migration is a UTF-8 text file whose documents are its lines, so
    # documents_count = lines_count and text_bytes = size_bytes are a fair backfill: lines_count
    # counted blank lines too, and size_bytes includes newlines and the whitespace that reading strips.
    apps.get_model("corpora", "Corpus").objects.update(documents_count=F("lines_count"), text_bytes=F("size_bytes"))


class Migration(migrations.Migration):

    dependencies = [
        ("corpora", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="corpus",
            name="format",
            field=models.CharField(
                choices=[("txt", "txt"), ("jsonl", "jsonl"), ("parquet", "parquet"), ("csv", "csv"),
                         ("arrow", "arrow"), ("dataset", "dataset")],
                default="txt", max_length=16),
        ),
        migrations.AddField(
            model_name="corpus",
            name="text_field",
            field=models.CharField(default="text", help_text="The column holding the text.", max_length=200),
        ),
        migrations.AddField(
            model_name="corpus",
            name="documents_count",
            field=models.BigIntegerField(default=0),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="corpus",
            name="text_bytes",
            field=models.BigIntegerField(default=0, help_text="UTF-8 bytes of all documents' text."),
            preserve_default=False,
        ),
        migrations.AlterField(
            model_name="corpus",
            name="path",
            field=models.CharField(help_text="Absolute path of the stored file or dataset folder.", max_length=1024),
        ),
        migrations.AlterField(
            model_name="corpus",
            name="lines_count",
            field=models.BigIntegerField(help_text="Non-empty lines over all documents."),
        ),
        migrations.RunPython(backfill_text_corpora, migrations.RunPython.noop),
    ]
