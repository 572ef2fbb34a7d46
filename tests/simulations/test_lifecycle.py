"""Every lifecycle transition through the API, and every refused one."""

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from machines.models import Machine
from machines.services import machine_set_status
from simulations import services
from simulations.housekeeping import reap_silent
from simulations.models import Simulation
from tests.factories import agent_client, make_machine, make_simulation
from tests.simulations.helpers import assert_error

S = Simulation.Status
# How a person or an agent asks for each target status: an endpoint, or PATCH {"status": ...}.
ENDPOINT = {S.RUNNING: "start", S.FINISHED: "finish", S.FAILED: "fail", S.CANCELLED: "cancel"}


def in_state(status: str, *, owner=None) -> tuple[Simulation, Machine]:
    """A simulation in `status` and the (only) machine of the fleet."""
    machine = make_machine(
        status=Machine.Status.MAINTENANCE if status == S.PENDING else Machine.Status.AVAILABLE
    )
    simulation = make_simulation(owner=owner)
    if status in (S.RUNNING, S.FINISHED, S.TIMED_OUT):
        simulation = services.simulation_start(simulation=simulation)
    if status == S.TIMED_OUT:
        simulation = services.simulation_time_out(simulation=simulation)
    if status == S.FINISHED:
        simulation = services.simulation_finish(simulation=simulation)
    if status == S.FAILED:
        simulation = services.simulation_fail(simulation=simulation, reason="boom")
    if status == S.CANCELLED:
        simulation = services.simulation_cancel(simulation=simulation)
    simulation.refresh_from_db()
    assert simulation.status == status
    return simulation, machine


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- the allowed transitions ---------------------------------------------------------------------


def test_pending_becomes_scheduled_when_a_machine_comes_back(api, staff_api, user):
    simulation, machine = in_state(S.PENDING, owner=user)
    assert api.get(f"/simulations/{simulation.pk}").json()["status"] == "pending"
    staff_api.patch(f"/machines/{machine.pk}/status", {"status": "available"}, format="json")
    body = api.get(f"/simulations/{simulation.pk}").json()
    assert body["status"] == "scheduled"
    assert body["machine"] == machine.pk
    assert body["scheduled_at"] is not None


def test_agent_starts_a_scheduled_simulation(user):
    simulation, machine = in_state(S.SCHEDULED, owner=user)
    response = agent_client(machine).post(f"/simulations/{simulation.pk}/start")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "running"
    assert body["started_at"] is not None
    assert body["last_heartbeat_at"] == body["started_at"]


def test_agent_finishes_a_running_simulation_and_frees_the_machine(user):
    simulation, machine = in_state(S.RUNNING, owner=user)
    response = agent_client(machine).post(f"/simulations/{simulation.pk}/finish/")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "finished"
    assert body["finished_at"] is not None
    assert body["machine"] == machine.pk  # the history keeps where it ran
    machine.refresh_from_db()
    assert machine.status == "available"


@pytest.mark.parametrize("source", [S.SCHEDULED, S.RUNNING])
def test_agent_reports_a_failure_with_its_reason(user, source):
    simulation, machine = in_state(source, owner=user)
    response = agent_client(machine).post(
        f"/simulations/{simulation.pk}/fail", {"reason": "CUDA out of memory"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["status"] == "failed"
    assert response.json()["failure_reason"] == "CUDA out of memory"
    machine.refresh_from_db()
    assert machine.status == "available"


def test_a_failure_without_a_reason_gets_a_default_one(user):
    simulation, machine = in_state(S.RUNNING, owner=user)
    body = agent_client(machine).post(f"/simulations/{simulation.pk}/fail").json()
    assert body["status"] == "failed"
    assert body["failure_reason"] == "Reported failed."


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (S.SCHEDULED, S.RUNNING),
        (S.RUNNING, S.FINISHED),
        (S.SCHEDULED, S.FAILED),
        (S.RUNNING, S.FAILED),
        (S.PENDING, S.CANCELLED),
        (S.SCHEDULED, S.CANCELLED),
        (S.RUNNING, S.CANCELLED),
    ],
)
def test_owner_moves_a_simulation_with_patch_status(api, user, source, target):
    simulation, _ = in_state(source, owner=user)
    response = api.patch(f"/simulations/{simulation.pk}", {"status": target}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == target
    simulation.refresh_from_db()
    assert simulation.status == target


@pytest.mark.parametrize("source", [S.SCHEDULED, S.RUNNING])
def test_a_silent_agent_sends_the_simulation_back_to_pending(api, user, settings, source):
    settings.SIMSCHED_MAX_RETRIES = 3
    simulation, machine = in_state(source, owner=user)
    Machine.objects.filter(pk=machine.pk).update(status=Machine.Status.MAINTENANCE)
    later = timezone.now() + timedelta(seconds=settings.SIMSCHED_HEARTBEAT_TIMEOUT + 1)
    assert reap_silent(now=later) == {"requeued": [simulation.pk], "failed": []}
    body = api.get(f"/simulations/{simulation.pk}").json()
    assert body["status"] == "pending"
    assert body["machine"] is None
    assert body["attempts"] == 1
    assert "silent" in body["failure_reason"]
    assert body["wait_reason"]["code"] == "fitting_machines_in_maintenance"


def test_every_allowed_transition_is_covered_here():
    """Guard: a new transition in the model needs a test above."""
    assert Simulation.TRANSITIONS == {
        S.PENDING: {S.SCHEDULED, S.CANCELLED},
        S.SCHEDULED: {S.RUNNING, S.PENDING, S.FAILED, S.CANCELLED},
        S.RUNNING: {S.FINISHED, S.FAILED, S.CANCELLED, S.PENDING, S.TIMED_OUT},
        S.FINISHED: set(),
        S.FAILED: set(),
        S.CANCELLED: set(),
        S.TIMED_OUT: set(),
    }


# --- the refused transitions ---------------------------------------------------------------------


@pytest.mark.parametrize("source", list(S))
def test_every_transition_not_in_the_lifecycle_is_409_with_the_current_status(
    staff_api, staff, source
):
    simulation, _ = in_state(source, owner=staff)
    before = Simulation.objects.filter(pk=simulation.pk).values().get()
    refused = [t for t in ENDPOINT if t not in Simulation.TRANSITIONS[source]]
    for target in refused:
        response = staff_api.post(f"/simulations/{simulation.pk}/{ENDPOINT[target]}")
        error = assert_error(response, 409, "invalid_transition")
        assert error["details"] == {"current_status": source}, target
        assert f"A {source} simulation cannot become {target}" in error["message"]
        if target == source:
            continue  # PATCHing the status it already has is a no-op, not a transition
        response = staff_api.patch(
            f"/simulations/{simulation.pk}", {"status": target}, format="json"
        )
        error = assert_error(response, 409)
        assert error["details"] == {"current_status": source}, target
    for target in (S.PENDING, S.SCHEDULED, S.TIMED_OUT):  # the scheduler's, never a person's
        if target == source:
            continue
        response = staff_api.patch(
            f"/simulations/{simulation.pk}", {"status": target}, format="json"
        )
        error = assert_error(response, 409)
        assert error["details"] == {"current_status": source}, target
    assert Simulation.objects.filter(pk=simulation.pk).values().get() == before


def test_a_refused_patch_keeps_the_other_changes_out_too(api, user):
    simulation, _ = in_state(S.FINISHED, owner=user)
    response = api.patch(
        f"/simulations/{simulation.pk}", {"name": "renamed", "status": "running"}, format="json"
    )
    assert_error(response, 409, "invalid_transition")
    simulation.refresh_from_db()
    assert simulation.name != "renamed"


def test_an_agent_may_not_act_for_another_machines_simulation(user):
    simulation, _ = in_state(S.SCHEDULED, owner=user)
    stranger = make_machine()
    for action in ("start", "finish", "fail"):
        assert_error(agent_client(stranger).post(f"/simulations/{simulation.pk}/{action}"), 403)
    heartbeat = agent_client(stranger).post(f"/simulations/{simulation.pk}/heartbeat")
    assert heartbeat.status_code == 200 and heartbeat.json()["stop"] is True
    simulation.refresh_from_db()
    assert simulation.status == "scheduled"


def test_a_requeued_simulations_old_agent_is_told_to_stop(user, settings):
    settings.SIMSCHED_HEARTBEAT_TIMEOUT = 0
    simulation, machine = in_state(S.RUNNING, owner=user)
    machine_set_status(machine=machine, status="maintenance")  # so it is not placed back there
    reap_silent()
    assert Simulation.objects.get(pk=simulation.pk).machine_id is None
    body = agent_client(machine).post(f"/simulations/{simulation.pk}/heartbeat").json()
    assert body["stop"] is True


def test_an_engineer_may_not_use_the_agent_endpoints(api, user):
    simulation, _ = in_state(S.SCHEDULED, owner=user)
    assert_error(api.post(f"/simulations/{simulation.pk}/start"), 403)


def test_agent_endpoints_on_an_unknown_simulation_are_404(staff_api):
    for action in ("start", "heartbeat", "finish", "fail", "cancel"):
        assert_error(staff_api.post(f"/simulations/999999/{action}"), 404, "not_found")


# --- cancel --------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [S.PENDING, S.SCHEDULED, S.RUNNING])
def test_cancel_works_in_every_non_final_state(api, user, source):
    simulation, _ = in_state(source, owner=user)
    response = api.post(f"/simulations/{simulation.pk}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None


@pytest.mark.parametrize("source", [S.SCHEDULED, S.RUNNING])
def test_cancel_frees_the_machine_for_the_next_simulation(api, user, source):
    simulation, machine = in_state(source, owner=user)
    waiting = make_simulation()
    assert waiting.status == "pending"
    api.post(f"/simulations/{simulation.pk}/cancel/")
    body = api.get(f"/simulations/{waiting.pk}").json()
    assert body["status"] == "scheduled"
    assert body["machine"] == machine.pk
    assert api.get(f"/machines/{machine.pk}").json()["current_simulation"] == waiting.pk


@pytest.mark.parametrize("source", [S.SCHEDULED, S.RUNNING])
def test_cancel_leaves_an_idle_machine_available(api, user, source):
    simulation, machine = in_state(source, owner=user)
    api.post(f"/simulations/{simulation.pk}/cancel")
    assert api.get(f"/machines/{machine.pk}").json()["status"] == "available"


def test_someone_else_may_not_cancel(api, other_user):
    simulation, _ = in_state(S.RUNNING, owner=other_user)
    assert_error(api.post(f"/simulations/{simulation.pk}/cancel"), 403)
    simulation.refresh_from_db()
    assert simulation.status == "running"


# --- heartbeat and claim -------------------------------------------------------------------------


@pytest.mark.parametrize("source", [S.SCHEDULED, S.RUNNING])
def test_heartbeat_of_an_active_simulation_records_it_and_says_carry_on(user, source):
    simulation, machine = in_state(source, owner=user)
    old = timezone.now() - timedelta(seconds=30)
    Simulation.objects.filter(pk=simulation.pk).update(last_heartbeat_at=old)
    response = agent_client(machine).post(f"/simulations/{simulation.pk}/heartbeat")
    assert response.status_code == 200
    assert response.json() == {
        "id": simulation.pk,
        "status": source,
        "stop": False,
        "preempt": False,
    }
    simulation.refresh_from_db()
    assert simulation.last_heartbeat_at > old


def test_heartbeat_on_a_cancelled_simulation_says_stop(api, user):
    simulation, machine = in_state(S.RUNNING, owner=user)
    api.post(f"/simulations/{simulation.pk}/cancel")
    response = agent_client(machine).post(f"/simulations/{simulation.pk}/heartbeat/")
    assert response.status_code == 200
    assert response.json() == {
        "id": simulation.pk,
        "status": "cancelled",
        "stop": True,
        "preempt": False,
    }


@pytest.mark.parametrize("source", [S.FINISHED, S.FAILED])
def test_heartbeat_on_an_ended_simulation_says_stop(user, source):
    simulation, machine = in_state(source, owner=user)
    body = agent_client(machine).post(f"/simulations/{simulation.pk}/heartbeat").json()
    assert body == {"id": simulation.pk, "status": source, "stop": True, "preempt": False}


@pytest.mark.parametrize("source", [S.SCHEDULED, S.RUNNING])
def test_claim_returns_the_simulation_reserved_for_the_machine(user, source):
    simulation, machine = in_state(source, owner=user)
    response = agent_client(machine).post("/agent/claim")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == simulation.pk
    assert body["status"] == source
    assert body["machine"] == machine.pk


def test_claim_with_nothing_reserved_is_204(transactional_db):
    machine = make_machine()
    response = agent_client(machine).post("/agent/claim/")
    assert response.status_code == 204
    assert response.content == b""


def test_claim_after_the_simulation_ended_is_204(user):
    _, machine = in_state(S.FINISHED, owner=user)
    assert agent_client(machine).post("/agent/claim").status_code == 204


def test_claim_is_for_agents_only(api):
    assert_error(api.post("/agent/claim"), 403)


# --- time and cost -------------------------------------------------------------------------------


def test_running_seconds_and_cost_come_from_the_time_on_the_machine(api, user):
    machine = make_machine(hourly_cost=Decimal("36.00"))
    simulation = make_simulation(owner=user)
    agent = agent_client(machine)
    agent.post(f"/simulations/{simulation.pk}/start")
    body = agent.post(f"/simulations/{simulation.pk}/finish").json()
    scheduled, started, finished = (
        when(body[k]) for k in ("scheduled_at", "started_at", "finished_at")
    )
    assert scheduled <= started <= finished
    assert body["running_seconds"] == pytest.approx((finished - started).total_seconds())
    on_machine = Decimal((finished - scheduled).total_seconds())
    expected = (Decimal("36.00") * on_machine / Decimal(3600)).quantize(Decimal("0.0001"))
    assert Decimal(body["cost"]) == expected
    assert body["hourly_cost"] == "36.00"


def test_the_cost_of_a_requeued_placement_is_kept(api, user, settings):
    machine = make_machine(hourly_cost=Decimal("3600.00"))
    simulation = make_simulation(owner=user)
    an_hour_ago = timezone.now() - timedelta(hours=1)
    Simulation.objects.filter(pk=simulation.pk).update(
        scheduled_at=an_hour_ago, last_heartbeat_at=an_hour_ago
    )
    Machine.objects.filter(pk=machine.pk).update(status=Machine.Status.MAINTENANCE)
    reap_silent()
    body = api.get(f"/simulations/{simulation.pk}").json()
    assert body["status"] == "pending"
    assert Decimal(body["cost"]) >= Decimal("3600.00")  # an hour on the machine, kept
    assert body["hourly_cost"] is None
