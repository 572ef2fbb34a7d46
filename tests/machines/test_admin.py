"""The fleet in the admin goes through the same services as the API."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.authtoken.models import Token

from machines.models import Machine
from machines.services import machine_agent_user
from simulations.models import Simulation
from tests.factories import make_machine, make_simulation

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/machines/machine/"


@pytest.fixture
def admin_client(staff):
    client = Client()
    client.force_login(staff)
    return client


def _messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def _form(machine: Machine, **changes) -> dict:
    fields = ["name", "cpu", "gpu", "memory", "cpu_cores", "gpu_count", "hourly_cost"]
    return {**{f: getattr(machine, f) for f in fields}, **changes, "_save": "Save"}


def _with_agent_token(machine: Machine):
    agent = machine_agent_user(machine=machine)
    Token.objects.get_or_create(user=agent)
    return agent


def test_bulk_delete_selected_removes_each_machines_agent_account_and_token(admin_client):
    machines = [make_machine(), make_machine()]
    agents = [_with_agent_token(m) for m in machines]
    response = admin_client.post(
        CHANGELIST,
        {"action": "delete_selected", "_selected_action": [m.pk for m in machines], "post": "yes"},
        follow=True,
    )
    assert response.status_code == 200
    assert not Machine.objects.exists()
    assert not get_user_model().objects.filter(pk__in=[a.pk for a in agents]).exists()
    assert not Token.objects.filter(user_id__in=[a.pk for a in agents]).exists()


def test_deleting_one_machine_removes_its_agent_account(admin_client):
    machine = make_machine()
    agent = _with_agent_token(machine)
    response = admin_client.post(f"{CHANGELIST}{machine.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Machine.objects.exists()
    assert not get_user_model().objects.filter(pk=agent.pk).exists()


def test_shrinking_a_machine_below_its_simulation_is_an_error_message(admin_client):
    machine = make_machine(memory=512)
    simulation = make_simulation(required_memory=256)
    simulation.refresh_from_db()
    assert simulation.machine_id == machine.pk
    response = admin_client.post(
        f"{CHANGELIST}{machine.pk}/change/", _form(machine, memory=128), follow=True
    )
    assert response.status_code == 200
    assert any("would no longer fit" in m for m in _messages(response))
    machine.refresh_from_db()
    assert machine.memory == 512


def test_a_machine_added_in_the_admin_takes_waiting_work(admin_client):
    simulation = make_simulation()
    response = admin_client.post(
        f"{CHANGELIST}add/",
        {
            "name": "admin-made",
            "cpu": "c",
            "gpu": "",
            "memory": 64,
            "cpu_cores": 8,
            "gpu_count": 0,
            "hourly_cost": "1.00",
            "_save": "Save",
        },
    )
    assert response.status_code == 302
    simulation.refresh_from_db()
    assert simulation.machine.name == "admin-made"
    assert simulation.machine.status == Machine.Status.BUSY


def test_a_duplicate_name_in_the_admin_is_a_form_error(admin_client):
    machine = make_machine()
    response = admin_client.post(f"{CHANGELIST}add/", _form(machine))
    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert Machine.objects.count() == 1


def test_maintenance_action_drains_a_busy_machine(admin_client):
    machine = make_machine()
    make_simulation()
    response = admin_client.post(
        CHANGELIST,
        {"action": "put_into_maintenance", "_selected_action": [machine.pk]},
        follow=True,
    )
    assert response.status_code == 200
    machine.refresh_from_db()
    assert machine.status == Machine.Status.MAINTENANCE
    assert Simulation.objects.get().machine_id == machine.pk  # it keeps its simulation


def test_the_admin_is_closed_to_agent_accounts(transactional_db):
    agent = machine_agent_user(machine=make_machine())
    agent.is_staff = agent.is_superuser = True  # even if someone ticked the boxes
    agent.save()
    client = Client()
    client.force_login(agent)
    response = client.post(
        CHANGELIST, {"action": "delete_selected", "_selected_action": [1], "post": "yes"}
    )
    assert response.status_code in (200, 302, 403)
    assert Machine.objects.count() == 1
