"""Small helpers shared by the security tests."""

from rest_framework.authtoken.models import Token

from tests.helpers import error_of  # noqa: F401 - re-exported


def token_key(user) -> str:
    return Token.objects.get_or_create(user=user)[0].key
