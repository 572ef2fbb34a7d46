"""Shared fixtures.

The suite runs on whatever DATABASE_URL / REDIS_URL name (SQLite and the in-memory channel
layer when unset). Tests marked `postgres` or `redis` need that service: they are skipped
without it, except when SIMSCHED_REQUIRE_SERVICES names it (CI's PostgreSQL + Redis pass),
where a missing service fails them instead.

API fixtures use `transactional_db`: the scheduler and broadcasts run on commit, as in
production, so tests see real assignment and real socket messages.
"""

import os

import pytest
from channels.layers import channel_layers
from django.conf import settings
from django.db import connection

from simsched.groups import recent_memberships
from tests.factories import make_user, token_client

REQUIRED = {s.strip() for s in os.environ.get("SIMSCHED_REQUIRE_SERVICES", "").split(",") if s}


def using_postgres() -> bool:
    return connection.vendor == "postgresql"


def using_redis() -> bool:
    return "RedisChannelLayer" in settings.CHANNEL_LAYERS["default"]["BACKEND"]


def _missing(service: str, reason: str):
    if service in REQUIRED:
        pytest.fail(f"{reason}, and SIMSCHED_REQUIRE_SERVICES requires {service}")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _services_for_markers(request):
    if request.node.get_closest_marker("postgres") and not using_postgres():
        _missing("postgres", "needs PostgreSQL (DATABASE_URL=postgres://...)")
    if request.node.get_closest_marker("redis") and not using_redis():
        _missing("redis", "needs Redis (REDIS_URL=redis://...)")


@pytest.fixture(autouse=True)
def _channel_layer_per_test():
    """Each test gets a channel layer of its own. A layer keeps asyncio state of the event loop
    that used it (channels_redis: its receive locks and buffers), and every async test runs on
    a loop of its own: a layer carried over from a test whose loop closed mid-receive fails the
    next test's receive ("Lock ... is bound to a different event loop", seen once in CI).
    The process's remembered group memberships go with it."""
    yield
    channel_layers.backends.clear()
    recent_memberships.answers.clear()


def pytest_sessionstart(session):
    """A pass that requires a service checks it is reachable before running anything."""
    if "redis" in REQUIRED and not os.environ.get("REDIS_URL"):
        pytest.exit("SIMSCHED_REQUIRE_SERVICES names redis but REDIS_URL is not set", returncode=3)
    if "postgres" in REQUIRED and not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        pytest.exit(
            "SIMSCHED_REQUIRE_SERVICES names postgres but DATABASE_URL is not", returncode=3
        )


@pytest.fixture
def user(transactional_db):
    return make_user("engineer")


@pytest.fixture
def other_user(transactional_db):
    return make_user("other-engineer")


@pytest.fixture
def staff(transactional_db):
    return make_user("operator", staff=True)


@pytest.fixture
def api(user):
    """An engineer's client, authenticated with a token."""
    return token_client(user)


@pytest.fixture
def staff_api(staff):
    return token_client(staff)


@pytest.fixture
def anon_api(transactional_db):
    from rest_framework.test import APIClient

    return APIClient()
