"""Simulations in the admin go through the same services as the API: no admin write breaks an
invariant, and a refusal is an error message on the page, never a 500."""

import pytest
from django.test import Client

from machines.models import Machine
from simulations.models import Simulation
from tests.factories import make_machine, make_simulation, make_user

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/simulations/simulation/"


@pytest.fixture
def admin_client(staff):
    client = Client()
    client.force_login(staff)
    return client


def _messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def _form(simulation: Simulation, **changes) -> dict:
    fields = {
        "name": simulation.name,
        "owner": simulation.owner_id or "",
        "pinned_machine": simulation.pinned_machine_id or "",
        "priority": simulation.priority,
        "required_gpus": simulation.required_gpus,
        "required_memory": simulation.required_memory,
        "required_cpu_cores": simulation.required_cpu_cores,
    }
    return {**fields, **changes, "_save": "Save"}


def _placed() -> Simulation:
    machine = make_machine()
    simulation = make_simulation(name="placed")
    simulation.refresh_from_db()
    assert simulation.machine_id == machine.pk
    return simulation


def test_deleting_an_active_simulation_is_refused_with_a_message(admin_client):
    simulation = _placed()
    response = admin_client.post(
        f"{CHANGELIST}{simulation.pk}/delete/", {"post": "yes"}, follow=True
    )
    assert response.status_code == 200
    assert any("cancel it before deleting" in m for m in _messages(response))
    simulation.refresh_from_db()
    assert simulation.status == Simulation.Status.SCHEDULED
    assert simulation.machine.status == Machine.Status.BUSY


def test_deleting_a_waiting_simulation_in_the_admin_works(admin_client):
    simulation = make_simulation()
    response = admin_client.post(f"{CHANGELIST}{simulation.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Simulation.objects.exists()


def test_bulk_delete_with_an_active_simulation_deletes_nothing(admin_client):
    active = _placed()
    waiting = make_simulation(name="waiting", required_gpus=999)
    response = admin_client.post(
        CHANGELIST,
        {
            "action": "delete_selected",
            "_selected_action": [active.pk, waiting.pk],
            "post": "yes",
        },
        follow=True,
    )
    assert response.status_code == 200
    assert any("cancel it before deleting" in m for m in _messages(response))
    assert Simulation.objects.count() == 2
    assert Machine.objects.get().status == Machine.Status.BUSY


def test_bulk_delete_of_waiting_simulations_works(admin_client):
    simulations = [make_simulation(required_gpus=999) for _ in range(3)]
    response = admin_client.post(
        CHANGELIST,
        {
            "action": "delete_selected",
            "_selected_action": [s.pk for s in simulations],
            "post": "yes",
        },
    )
    assert response.status_code == 302
    assert not Simulation.objects.exists()


def test_editing_an_active_simulations_requirements_is_an_error_message(admin_client):
    simulation = _placed()
    response = admin_client.post(
        f"{CHANGELIST}{simulation.pk}/change/", _form(simulation, required_gpus=4), follow=True
    )
    assert response.status_code == 200
    assert any("only change while the simulation is pending" in m for m in _messages(response))
    simulation.refresh_from_db()
    assert simulation.required_gpus == 0


def test_renaming_an_active_simulation_in_the_admin_works(admin_client):
    simulation = _placed()
    response = admin_client.post(
        f"{CHANGELIST}{simulation.pk}/change/", _form(simulation, name="renamed")
    )
    assert response.status_code == 302
    simulation.refresh_from_db()
    assert (simulation.name, simulation.status) == ("renamed", Simulation.Status.SCHEDULED)


def test_pinning_to_a_machine_too_small_is_an_error_message(admin_client):
    small = make_machine(gpu_count=0)
    simulation = make_simulation(required_gpus=4)
    response = admin_client.post(
        f"{CHANGELIST}{simulation.pk}/change/",
        _form(simulation, pinned_machine=small.pk),
        follow=True,
    )
    assert any("does not satisfy" in m for m in _messages(response))
    simulation.refresh_from_db()
    assert simulation.pinned_machine_id is None


def test_a_simulation_added_in_the_admin_is_scheduled_and_owned(admin_client, staff):
    make_machine()
    owner = make_user("admin-chosen-owner")
    form = {
        "name": "from-admin",
        "owner": owner.pk,
        "pinned_machine": "",
        "priority": 0,
        "required_gpus": 0,
        "required_memory": 1,
        "required_cpu_cores": 0,
        "_save": "Save",
    }
    response = admin_client.post(f"{CHANGELIST}add/", form)
    assert response.status_code == 302
    simulation = Simulation.objects.get(name="from-admin")
    assert simulation.owner_id == owner.pk
    assert simulation.status == Simulation.Status.SCHEDULED


def test_staff_reassigns_the_owner_in_the_admin(admin_client):
    simulation = make_simulation(required_gpus=999)
    owner = make_user("new-owner")
    response = admin_client.post(
        f"{CHANGELIST}{simulation.pk}/change/", _form(simulation, owner=owner.pk)
    )
    assert response.status_code == 302
    simulation.refresh_from_db()
    assert simulation.owner_id == owner.pk


def test_cancel_action_frees_the_machine(admin_client):
    simulation = _placed()
    response = admin_client.post(
        CHANGELIST,
        {"action": "cancel_simulations", "_selected_action": [simulation.pk]},
        follow=True,
    )
    assert response.status_code == 200
    simulation.refresh_from_db()
    assert simulation.status == Simulation.Status.CANCELLED
    assert simulation.machine.status == Machine.Status.AVAILABLE
