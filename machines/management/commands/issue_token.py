from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token

from machines.models import Machine
from machines.services import machine_agent_user


class Command(BaseCommand):
    help = (
        "Print an API token (`Authorization: Token <key>`) for a user, or for a machine's agent "
        "(which may then act only for simulations on that machine)."
    )

    def add_arguments(self, parser):
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument("--user", help="Username of a person or script account.")
        who.add_argument("--machine", help="Machine name: the token of its agent.")
        parser.add_argument("--rotate", action="store_true", help="Replace an existing token.")

    def handle(self, *args, user, machine, rotate, **options):
        if machine:
            found = Machine.objects.filter(name=machine).first()
            if found is None:
                raise CommandError(f"No machine named {machine!r}.")
            account = machine_agent_user(machine=found)
        else:
            account = get_user_model().objects.filter(username=user).first()
            if account is None:
                raise CommandError(f"No user named {user!r}.")
        if rotate:
            Token.objects.filter(user=account).delete()
        token, _ = Token.objects.get_or_create(user=account)
        self.stdout.write(token.key)
