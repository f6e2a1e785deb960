from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create USERNAME if needed and print an API token for it (the last line of stdout)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--staff", action="store_true", help="Make the user staff (admin access).")

    def handle(self, *args, username, staff, **options):
        user, created = get_user_model().objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()
        if staff:
            user.is_staff = True
        user.save()
        token, _ = Token.objects.get_or_create(user=user)
        if created:
            self.stderr.write(f"Created user {username}")
        self.stdout.write(token.key)
