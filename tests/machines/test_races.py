"""Unique constraints under a race: the loser gets a 400 in the error shape, never a 500."""

import threading

import pytest
from django.db import connection

from machines.models import Machine
from machines.services import machine_agent_user
from tests.factories import make_machine, make_user, token_client
from tests.helpers import assert_error

pytestmark = pytest.mark.django_db(transaction=True)

PARALLEL = 20


def _at_once(count: int, request) -> list:
    """Run `request(i)` in `count` threads released together; returns the responses."""
    barrier = threading.Barrier(count)
    responses = [None] * count

    def run(i):
        try:
            barrier.wait()
            responses[i] = request(i)
        finally:
            connection.close()  # each thread has its own connection

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


@pytest.mark.postgres
def test_parallel_creates_of_one_machine_name_give_one_201_and_400s(staff):
    clients = [token_client(staff) for _ in range(PARALLEL)]
    body = {"name": "contested", "cpu": "c", "memory": 8}
    responses = _at_once(PARALLEL, lambda i: clients[i].post("/machines/", body, format="json"))
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [400] * (PARALLEL - 1)
    for response in responses:
        if response.status_code == 400:
            assert "name" in assert_error(response, 400, "invalid")["fields"]
    assert Machine.objects.filter(name="contested").count() == 1


@pytest.mark.postgres
def test_parallel_renames_to_one_name_give_one_200_and_400s(staff):
    machines = [make_machine() for _ in range(PARALLEL)]
    clients = [token_client(staff) for _ in range(PARALLEL)]
    responses = _at_once(
        PARALLEL,
        lambda i: clients[i].patch(f"/machines/{machines[i].pk}", {"name": "taken"}, format="json"),
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] + [400] * (PARALLEL - 1)
    assert Machine.objects.filter(name="taken").count() == 1


def test_a_taken_name_is_a_400_on_create_and_rename(staff_api):
    first, second = make_machine(name="one"), make_machine(name="two")
    created = staff_api.post("/machines/", {"name": "one", "cpu": "c", "memory": 8}, format="json")
    assert "name" in assert_error(created, 400, "invalid")["fields"]
    renamed = staff_api.patch(f"/machines/{second.pk}", {"name": "one"}, format="json")
    assert "name" in assert_error(renamed, 400, "invalid")["fields"]
    assert sorted(Machine.objects.values_list("name", flat=True)) == ["one", "two"]
    assert first.pk


def test_an_agent_account_is_made_even_when_a_person_has_its_username(transactional_db):
    person = make_user("agent-gpu-01")
    machine = make_machine(name="gpu-01")
    agent = machine_agent_user(machine=machine)
    assert agent.pk != person.pk
    assert agent.username == f"agent-gpu-01-{machine.pk}"
    assert machine_agent_user(machine=machine).pk == agent.pk
