from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from corpora.services import corpus_add_from_path
from mistudio.errors import ServiceError


class Command(BaseCommand):
    help = ("Add a corpus from a path on this machine: a file (.txt, .jsonl, .parquet, .csv, .arrow) or a folder "
            "written by datasets' Dataset.save_to_disk, which cannot be uploaded as one file.")

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--name", help="the corpus's name, what train requests give as corpus_file "
                                           "(by default the file's or folder's name)")
        parser.add_argument("--text-field", default="text", help="the column holding the text (default: text)")
        # manage.py train's default user: a corpus added here is one its --corpus NAME finds.
        parser.add_argument("--owner", default="cli", help="the username it belongs to (created if needed; "
                                                           "default: cli, as manage.py train)")

    def handle(self, *args, path, name, text_field, owner, **options):
        user, _ = get_user_model().objects.get_or_create(username=owner)
        try:
            corpus = corpus_add_from_path(owner=user, path=path, name=name, text_field=text_field)
        except ServiceError as err:
            raise CommandError(err.message) from None
        self.stdout.write(f"Corpus {corpus.name} ({corpus.format}): {corpus.documents_count} documents, "
                          f"{corpus.lines_count} lines, {corpus.size_bytes} bytes, stored at {corpus.path}")
