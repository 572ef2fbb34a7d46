"""Token authentication remembers a checked token for a few seconds, and forgets it as soon as
the token, its user or the user's machine changes in this process."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token

from machines.services import machine_delete
from simsched import authentication
from tests.factories import agent_client, make_machine, token_client
from tests.helpers import assert_error


@pytest.fixture(autouse=True)
def empty_cache():
    authentication._remembered.clear()
    yield
    authentication._remembered.clear()


def queries_of(client, path: str) -> tuple[int, list[str]]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    return response.status_code, [query["sql"] for query in captured.captured_queries]


def test_a_remembered_token_is_not_read_again(user):
    client = token_client(user)
    status, first = queries_of(client, "/machines")
    assert status == 200
    assert any("authtoken_token" in sql for sql in first)

    status, second = queries_of(client, "/machines")

    assert status == 200
    assert not any("authtoken_token" in sql for sql in second)
    assert len(second) == len(first) - 1


def test_a_deleted_token_is_refused_at_once(user):
    client = token_client(user)
    assert client.get("/machines").status_code == 200

    Token.objects.filter(user=user).delete()  # a queryset delete still sends post_delete

    assert_error(client.get("/machines"), 401)


def test_a_deactivated_user_is_refused_at_once(user):
    client = token_client(user)
    assert client.get("/machines").status_code == 200

    user.is_active = False
    user.save()

    assert_error(client.get("/machines"), 401)


def test_a_deleted_machines_agent_is_refused_at_once(transactional_db):
    machine = make_machine()
    client = agent_client(machine)
    assert client.get("/machines").status_code == 200

    machine_delete(machine=machine)  # takes the agent account and its token with it

    assert_error(client.get("/machines"), 401)


def test_the_cache_can_be_turned_off(user, settings):
    settings.SIMSCHED_TOKEN_CACHE_SECONDS = 0
    client = token_client(user)
    client.get("/machines")

    status, queries = queries_of(client, "/machines")

    assert status == 200
    assert any("authtoken_token" in sql for sql in queries)
