from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the demo operator account (staff) for a local run, if it does not exist."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="operator")
        parser.add_argument("--password", default="operator")

    def handle(self, *args, username, password, **options):
        users = get_user_model().objects
        if not users.filter(username=username).exists():
            users.create_superuser(username=username, email="", password=password)
            self.stdout.write(f"Created demo operator {username!r}.")
        self.stdout.write(f"Sign in at http://127.0.0.1:8000/login/ as {username} / {password}")
