from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from engine.disk import size_text
from mistudio.errors import ServiceError
from training.artifacts.retention import artifacts_purge


class Command(BaseCommand):
    help = ("Delete the files of jobs that ended more than N days ago (their rows stay, marked as purged); "
            "N is --older-than-days, else MISTUDIO_RETENTION_DAYS. Run it from cron.")

    def add_arguments(self, parser):
        parser.add_argument("--older-than-days", type=int, default=None,
                            help="Jobs that ended more than this many days ago (default: MISTUDIO_RETENTION_DAYS).")
        parser.add_argument("--dry-run", action="store_true", help="Say what would be deleted; delete nothing.")

    def handle(self, *args, older_than_days, dry_run, **options):
        days = older_than_days if older_than_days is not None else settings.RETENTION_DAYS
        if not days:
            raise CommandError("Give --older-than-days N, or set MISTUDIO_RETENTION_DAYS: retention is off.")
        try:
            report = artifacts_purge(older_than_days=days, dry_run=dry_run)
        except ServiceError as err:
            raise CommandError(err.message) from None
        for path in report.paths:
            self.stdout.write(f"{'would delete' if dry_run else 'deleted'} {path}")
        verb = "Would free" if dry_run else "Freed"
        self.stdout.write(f"{verb} {size_text(report.bytes)} in {len(report.paths)} files and folders of "
                          f"{len(report.jobs)} jobs ended more than {days} days ago"
                          f"{f' and {len(report.sweeps)} sweeps' if report.sweeps else ''}.")
