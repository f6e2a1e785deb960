from django.core.management.base import BaseCommand

from mistudio.accounts import user_issue_token


class Command(BaseCommand):
    help = "Create USERNAME if needed and print a new API token for it (the last line of stdout)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--staff", action="store_true", help="Make the user staff (admin access).")

    def handle(self, *args, username, staff, **options):
        _, token = user_issue_token(username=username, staff=staff)
        self.stdout.write(token)
