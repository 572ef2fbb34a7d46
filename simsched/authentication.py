"""Token authentication for agents that report a point every few milliseconds.

DRF's `TokenAuthentication` reads the token and its user on every request, and the permission
checks then read the user's machine (agents write only to their own). This class reads all three
in one query and remembers the answer for `SIMSCHED_TOKEN_CACHE_SECONDS`.

Deleting a token, or changing its user or the user's machine, takes effect at once in the process
that makes the change; other server processes notice within the cache time (5 s by default;
0 turns the cache off).
"""

import copy
import time
from typing import NamedTuple

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils.translation import gettext_lazy as _
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed

from machines.models import Machine

MAX_REMEMBERED = 10_000


class _Remembered(NamedTuple):
    user: object
    token: Token
    until: float


_remembered: dict[str, _Remembered] = {}


class CachedTokenAuthentication(TokenAuthentication):
    """`Authorization: Token <key>`, as DRF's, with the user's machine loaded alongside."""

    def authenticate_credentials(self, key):
        now = time.monotonic()
        remembered = _remembered.get(key)
        if remembered is not None and remembered.until > now:
            # A copy per request: nothing one request caches on its user leaks into another.
            return copy.copy(remembered.user), remembered.token
        try:
            token = Token.objects.select_related("user", "user__agent_machine").get(key=key)
        except Token.DoesNotExist:
            raise AuthenticationFailed(_("Invalid token.")) from None
        if not token.user.is_active:
            raise AuthenticationFailed(_("User inactive or deleted."))
        seconds = settings.SIMSCHED_TOKEN_CACHE_SECONDS
        if seconds > 0:
            if len(_remembered) >= MAX_REMEMBERED:
                _remembered.clear()
            _remembered[key] = _Remembered(copy.copy(token.user), token, now + seconds)
        return token.user, token


def forget_user(user_id: int | None) -> None:
    for key, remembered in list(_remembered.items()):
        if remembered.user.pk == user_id:
            _remembered.pop(key, None)


@receiver(post_delete, sender=Token)
def _token_deleted(sender, instance, **kwargs):
    _remembered.pop(instance.key, None)


@receiver(post_save, sender=get_user_model())
@receiver(post_delete, sender=get_user_model())
def _user_changed(sender, instance, **kwargs):
    forget_user(instance.pk)


@receiver(post_save, sender=Machine)
@receiver(post_delete, sender=Machine)
def _machine_changed(sender, instance, **kwargs):
    forget_user(instance.agent_user_id)
