"""Who may do what over HTTP: anonymous callers, engineers, staff and machine agents."""

import re

import pytest
from django.test import Client
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from convergence.models import ConvergencePoint
from machines.models import Machine
from simulations.models import Simulation
from tests.factories import agent_client, make_machine, make_simulation, make_user, token_client
from tests.security.helpers import error_of, token_key

PUBLIC_PATHS = {"/health"}


def _api_operations() -> list[tuple[str, str]]:
    """Every (method, path) the OpenAPI schema documents, with path parameters filled in."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    operations = []
    for path, item in schema["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "1", path)
        if concrete.rstrip("/") in PUBLIC_PATHS:
            continue
        for method in item:
            if method in {"get", "post", "put", "patch", "delete"}:
                operations.append((method, concrete))
    return operations


OPERATIONS = _api_operations()


def test_the_schema_lists_the_endpoints_checked_below():
    paths = {path for _, path in OPERATIONS}
    expected = {"/machines/", "/simulations/1/start/", "/convergence/1/points/", "/agent/claim/"}
    assert expected <= paths
    assert len(OPERATIONS) > 25


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_anonymous_callers_get_401_in_the_error_shape(anon_api, method, path):
    response = getattr(anon_api, method)(path, {}, format="json")
    assert response.status_code == 401
    assert error_of(response)["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Token")


def test_anonymous_writes_store_nothing(anon_api):
    machine = make_machine()
    simulation = make_simulation()
    anon_api.post("/machines/", {"name": "x", "cpu": "c", "memory": 8}, format="json")
    anon_api.delete(f"/machines/{machine.pk}")
    anon_api.post(f"/simulations/{machine.pk}/create-bare-sql", {"name": "x"}, format="json")
    anon_api.post(
        f"/convergence/{simulation.pk}/points",
        {"points": [{"step": 0, "loss_value": 1}]},
        format="json",
    )
    assert Machine.objects.count() == 1
    assert Simulation.objects.count() == 1
    assert ConvergencePoint.objects.count() == 0


# --- The fleet is for staff -------------------------------------------------------------------


def test_an_engineer_cannot_create_a_machine(api):
    response = api.post("/machines/", {"name": "rogue", "cpu": "c", "memory": 8}, format="json")
    assert response.status_code == 403
    assert error_of(response)["code"] == "permission_denied"
    assert not Machine.objects.filter(name="rogue").exists()


def test_an_engineer_cannot_change_a_machine_status(api):
    machine = make_machine()
    response = api.patch(f"/machines/{machine.pk}/status", {"status": "maintenance"}, format="json")
    assert response.status_code == 403
    error_of(response)
    machine.refresh_from_db()
    assert machine.status == Machine.Status.AVAILABLE


def test_an_engineer_cannot_edit_or_delete_a_machine(api):
    machine = make_machine()
    assert api.patch(f"/machines/{machine.pk}", {"memory": 1}, format="json").status_code == 403
    assert api.delete(f"/machines/{machine.pk}").status_code == 403
    machine.refresh_from_db()
    assert machine.memory == 512


def test_an_engineer_can_read_the_fleet(api):
    make_machine()
    assert api.get("/machines/").status_code == 200
    assert api.get("/machines/utilisation").status_code == 200


def test_staff_can_create_change_and_delete_machines(staff_api):
    created = staff_api.post("/machines/", {"name": "m1", "cpu": "c", "memory": 8}, format="json")
    assert created.status_code == 201
    machine_id = created.json()["id"]
    status = staff_api.patch(
        f"/machines/{machine_id}/status", {"status": "maintenance"}, format="json"
    )
    assert status.status_code == 200
    assert staff_api.delete(f"/machines/{machine_id}").status_code == 204
    assert not Machine.objects.filter(pk=machine_id).exists()


# --- Agents report for their own machine, and only that ---------------------------------------


def _running_on(machine: Machine) -> Simulation:
    simulation = make_simulation(pinned_machine=machine)
    simulation.refresh_from_db()
    assert simulation.machine_id == machine.pk  # the scheduler placed it on commit
    return simulation


def test_an_agent_cannot_create_or_edit_simulations(transactional_db):
    machine = make_machine()
    agent = agent_client(machine)
    simulation = make_simulation()
    created = agent.post("/simulations/", {"name": "by-agent"}, format="json")
    assert created.status_code == 403
    error_of(created)
    bare = agent.post(
        f"/simulations/{machine.pk}/create-bare-sql", {"name": "by-agent"}, format="json"
    )
    assert bare.status_code == 403
    edited = agent.patch(f"/simulations/{simulation.pk}", {"priority": 5}, format="json")
    assert edited.status_code == 403
    assert agent.delete(f"/simulations/{simulation.pk}").status_code == 403
    assert not Simulation.objects.filter(name="by-agent").exists()
    simulation.refresh_from_db()
    assert simulation.priority == 0


@pytest.mark.parametrize("action", ["start", "finish", "fail"])
def test_an_agent_cannot_drive_another_machines_simulation(transactional_db, action):
    mine, theirs = make_machine(), make_machine()
    simulation = _running_on(theirs)
    response = agent_client(mine).post(f"/simulations/{simulation.pk}/{action}")
    assert response.status_code == 403
    error_of(response)
    assert Simulation.objects.get(pk=simulation.pk).status == Simulation.Status.SCHEDULED


def test_another_machines_agent_heartbeating_is_told_to_stop_and_recorded_nowhere(
    transactional_db,
):
    mine, theirs = make_machine(), make_machine()
    simulation = _running_on(theirs)
    before = Simulation.objects.get(pk=simulation.pk).last_heartbeat_at
    response = agent_client(mine).post(f"/simulations/{simulation.pk}/heartbeat")
    assert response.status_code == 200
    assert response.json()["stop"] is True
    assert Simulation.objects.get(pk=simulation.pk).last_heartbeat_at == before


def test_an_agent_cannot_post_points_for_another_machines_simulation(transactional_db):
    mine, theirs = make_machine(), make_machine()
    simulation = _running_on(theirs)
    agent = agent_client(mine)
    batch = {"points": [{"step": 0, "loss_value": 1.0}]}
    one = {"simulation_id": simulation.pk, "step": 1, "loss_value": 1.0}
    responses = [
        agent.post(f"/convergence/{simulation.pk}/points", batch, format="json"),
        agent.post("/convergence/data", one, format="json"),
        agent.post(
            f"/convergence/{simulation.pk}/add-bare-sql", {"loss_value": 1.0}, format="json"
        ),
    ]
    assert [r.status_code for r in responses] == [403, 403, 403]
    assert ConvergencePoint.objects.count() == 0


def test_an_agent_runs_its_own_machines_simulation_end_to_end(transactional_db):
    machine = make_machine()
    simulation = _running_on(machine)
    agent = agent_client(machine)
    base = f"/simulations/{simulation.pk}"
    assert agent.post("/agent/claim").json()["id"] == simulation.pk
    assert agent.post(f"{base}/start").status_code == 200
    assert agent.post(f"{base}/heartbeat").json()["stop"] is False
    batch = {"points": [{"step": 0, "loss_value": 2.0}, {"step": 1, "loss_value": 1.5}]}
    assert agent.post(f"/convergence/{simulation.pk}/points", batch, format="json").json() == {
        "stored": 2,
        "duplicates": 0,
    }
    one = {"simulation_id": simulation.pk, "step": 2, "loss_value": 1.2}
    assert agent.post("/convergence/data", one, format="json").status_code == 201
    assert agent.post(f"{base}/finish").json()["status"] == "finished"
    assert ConvergencePoint.objects.filter(simulation=simulation).count() == 3


def test_claim_is_for_agents_only(api):
    response = api.post("/agent/claim")
    assert response.status_code == 403
    error_of(response)


# --- Deleting and cancelling: the owner or staff ----------------------------------------------


def test_only_the_owner_or_staff_may_delete_a_simulation(user, other_user, staff):
    mine = make_simulation(owner=user)
    other = token_client(other_user).delete(f"/simulations/{mine.pk}")
    assert other.status_code == 403
    assert error_of(other)["code"] == "permission_denied"
    assert Simulation.objects.filter(pk=mine.pk).exists()
    assert token_client(user).delete(f"/simulations/{mine.pk}").status_code == 204
    theirs = make_simulation(owner=other_user)
    assert token_client(staff).delete(f"/simulations/{theirs.pk}").status_code == 204
    assert Simulation.objects.count() == 0


def test_only_the_owner_or_staff_may_cancel_a_simulation(user, other_user, staff):
    first, second = make_simulation(owner=user), make_simulation(owner=user)
    other = token_client(other_user).post(f"/simulations/{first.pk}/cancel")
    assert other.status_code == 403
    error_of(other)
    assert Simulation.objects.get(pk=first.pk).status == Simulation.Status.PENDING
    assert token_client(user).post(f"/simulations/{first.pk}/cancel").status_code == 200
    assert token_client(staff).post(f"/simulations/{second.pk}/cancel").status_code == 200
    statuses = set(Simulation.objects.values_list("status", flat=True))
    assert statuses == {Simulation.Status.CANCELLED}


# --- Sessions and CSRF ------------------------------------------------------------------------


def test_the_login_page_signs_in_and_the_browsable_api_then_answers(user):
    client = Client()
    response = client.post("/login/", {"username": user.username, "password": "pw-123456"})
    assert response.status_code == 302
    page = client.get("/simulations/", HTTP_ACCEPT="text/html")
    assert page.status_code == 200
    assert page["Content-Type"].startswith("text/html")
    assert client.get("/machines/", HTTP_ACCEPT="application/json").status_code == 200


def test_session_writes_without_a_csrf_token_are_refused(user):
    client = APIClient(enforce_csrf_checks=True)
    assert client.login(username=user.username, password="pw-123456")
    response = client.post("/simulations/", {"name": "no-csrf"}, format="json")
    assert response.status_code == 403
    assert "CSRF" in error_of(response)["message"]
    assert not Simulation.objects.filter(name="no-csrf").exists()


def test_session_writes_with_the_csrf_token_are_accepted(user):
    client = APIClient(enforce_csrf_checks=True)
    client.get("/login/")
    signed_in = client.post(
        "/login/",
        {"username": user.username, "password": "pw-123456"},
        HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
    )
    assert signed_in.status_code == 302
    client.get("/")  # the dashboard page carries the (rotated) token, as a browser sees it
    token = client.cookies["csrftoken"].value
    response = client.post(
        "/simulations/", {"name": "with-csrf"}, format="json", HTTP_X_CSRFTOKEN=token
    )
    assert response.status_code == 201


def test_token_writes_need_no_csrf_token(user):
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_key(user)}")
    response = client.post("/simulations/", {"name": "by-token"}, format="json")
    assert response.status_code == 201


@pytest.mark.parametrize("path", ["/", "/dashboard/simulations/1"])
def test_dashboard_pages_send_anonymous_visitors_to_login(transactional_db, path):
    response = Client().get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


def test_admin_sends_anonymous_visitors_to_login(transactional_db):
    response = Client().get("/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_admin_is_closed_to_engineers(user):
    client = Client()
    client.force_login(user)
    response = client.get("/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    client.force_login(make_user("admin-operator", staff=True))
    assert client.get("/admin/").status_code == 200
