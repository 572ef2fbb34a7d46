"""Small helpers shared by the security tests."""

from rest_framework.authtoken.models import Token


def error_of(response) -> dict:
    """The one error shape: {"error": {"code", "message", "fields"?, "details"?}}."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    return body["error"]


def token_key(user) -> str:
    return Token.objects.get_or_create(user=user)[0].key
