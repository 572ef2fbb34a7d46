"""Limits and guards: max_duration, nan, divergence, plateau and stall stop a run and free its
machine; the agent learns it on its next heartbeat; what stopped it is recorded."""

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from convergence.models import ConvergencePoint
from convergence.services import Point, points_ingest
from simulations import guards, services
from simulations.housekeeping import scheduler_pass, time_out_overdue
from simulations.models import Simulation
from tests.factories import agent_client, make_machine, make_simulation
from tests.simulations.helpers import assert_error, set_times

pytestmark = pytest.mark.django_db(transaction=True)
S = Simulation.Status


def running(owner, **fields) -> tuple[Simulation, object]:
    machine = make_machine(hourly_cost=Decimal("36.00"))
    simulation = make_simulation(owner=owner, **fields)
    simulation = services.simulation_start(simulation=simulation)
    return simulation, machine


def send(client, simulation, steps_losses):
    points = [{"step": s, "loss_value": v} for s, v in steps_losses]
    return client.post(f"/convergence/{simulation.pk}/points", {"points": points}, format="json")


def heartbeat(machine, simulation) -> dict:
    return agent_client(machine).post(f"/simulations/{simulation.pk}/heartbeat").json()


def assert_stopped(simulation, machine, status, stopped_by):
    simulation.refresh_from_db()
    machine.refresh_from_db()
    assert simulation.status == status
    assert simulation.stopped_by == stopped_by
    assert machine.status == "available"
    assert heartbeat(machine, simulation)["stop"] is True
    return simulation


# --- the resource ---------------------------------------------------------------------------------


def test_a_new_simulation_has_the_default_nan_guard(api):
    body = api.post("/simulations/", {"name": "a"}, format="json").json()
    assert body["guards"] == {"nan": True}
    assert body["max_duration"] is None
    assert body["preemptible"] is False and body["preempt_grace"] == 120
    assert body["stopped_by"] == "" and body["resume_step"] == 0


def test_the_fleet_default_guards_come_from_settings(api, settings):
    settings.SIMSCHED_DEFAULT_GUARDS = {"nan": True, "stall_seconds": 900}
    body = api.post("/simulations/", {"name": "a", "guards": {}}, format="json").json()
    assert body["guards"] == {"nan": True, "stall_seconds": 900}


def test_guards_are_stored_normalized(api):
    guards_in = {
        "stall_seconds": 600,
        "plateau": {"metric": "loss", "window": 5000, "min_delta": 0.001},
        "divergence": {"metric": "val/loss", "factor": 10},
    }
    body = api.post(
        "/simulations/", {"name": "a", "guards": guards_in, "max_duration": 3600}, format="json"
    ).json()
    assert body["guards"] == {
        "nan": True,
        "stall_seconds": 600,
        "plateau": {"metric": "loss", "window": 5000, "min_delta": 0.001},
        "divergence": {"metric": "val/loss", "factor": 10.0},
    }
    assert body["max_duration"] == 3600


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"nan": "yes"},
        {"unknown": 1},
        {"stall_seconds": 0},
        {"stall_seconds": 1.5},
        {"plateau": {"metric": "loss"}},
        {"plateau": {"window": 10, "min_delta": -1}},
        {"plateau": {"window": 10, "extra": 1}},
        {"divergence": {"factor": 1}},
        {"divergence": {"factor": "ten"}},
        {"divergence": {"metric": "bad name!", "factor": 2}},
    ],
)
def test_bad_guards_are_a_400_naming_the_field_and_create_nothing(api, bad):
    before = Simulation.objects.count()
    response = api.post("/simulations/", {"name": "a", "guards": bad}, format="json")
    error = assert_error(response, 400, "invalid")
    assert "guards" in error["fields"]
    assert Simulation.objects.count() == before


@pytest.mark.parametrize("value", [0, -5, 10**9, "soon"])
def test_a_bad_max_duration_is_a_400(api, value):
    response = api.post("/simulations/", {"name": "a", "max_duration": value}, format="json")
    assert "max_duration" in assert_error(response, 400, "invalid")["fields"]


def test_changing_guards_resets_what_they_remembered(api, user):
    simulation = make_simulation(owner=user, guards={"divergence": {"factor": 5}})
    Simulation.objects.filter(pk=simulation.pk).update(guard_state={"divergence_best": 0.1})
    response = api.patch(
        f"/simulations/{simulation.pk}", {"guards": {"divergence": {"factor": 9}}}, format="json"
    )
    assert response.status_code == 200, response.content
    simulation.refresh_from_db()
    assert simulation.guard_state == {}
    assert simulation.guards["divergence"]["factor"] == 9.0


# --- nan -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        '{"points": [{"step": 0, "loss_value": 1.0}, {"step": 7, "loss_value": NaN}]}',
        '{"points": [{"step": 7, "loss_value": "Infinity"}]}',
        '{"points": [{"step": 7, "loss_value": -Infinity}]}',
    ],
)
def test_a_non_finite_batch_from_the_agent_stops_the_run_and_stores_nothing(user, body):
    simulation, machine = running(user, max_duration=7200)
    response = agent_client(machine).post(
        f"/convergence/{simulation.pk}/points", data=body, content_type="application/json"
    )
    error = assert_error(response, 400, "invalid")
    assert "stopped" in error["message"] and "non-finite loss at step 7" in error["message"]
    assert error["details"] == {
        "stopped": True,
        "stopped_by": "nan",
        "status": "failed",
        "stop_step": 7,
    }
    assert ConvergencePoint.objects.filter(simulation=simulation).count() == 0
    simulation = assert_stopped(simulation, machine, S.FAILED, "nan")
    assert simulation.stop_step == 7
    assert simulation.failure_reason == "non-finite loss at step 7"
    assert simulation.saved_hours is not None and simulation.saved_hours > Decimal("1.99")
    assert abs(simulation.saved_cost - simulation.saved_hours * 36) < Decimal("0.01")


def test_a_non_finite_single_point_from_the_owner_stops_the_run_at_the_next_step(api, user):
    simulation, machine = running(user)
    points_ingest(simulation_id=simulation.pk, points=[Point(4, 0.5, timezone.now())])
    body = f'{{"simulation_id": {simulation.pk}, "loss_value": NaN}}'
    response = api.post("/convergence/data", data=body, content_type="application/json")
    error = assert_error(response, 400, "invalid")
    assert error["details"]["stop_step"] == 5
    assert_stopped(simulation, machine, S.FAILED, "nan")


def test_a_non_finite_bare_sql_point_as_a_string_stops_the_run(user):
    simulation, machine = running(user)
    response = agent_client(machine).post(
        f"/convergence/{simulation.pk}/add-bare-sql",
        {"step": 3, "loss_value": "NaN"},
        format="json",
    )
    assert assert_error(response, 400)["details"]["stopped_by"] == "nan"
    assert_stopped(simulation, machine, S.FAILED, "nan")


def test_a_non_finite_value_from_staff_is_refused_without_stopping_the_run(staff_api, user):
    simulation, machine = running(user)
    response = send(staff_api, simulation, [(1, "NaN")])
    error = assert_error(response, 400, "invalid")
    assert "details" not in error
    simulation.refresh_from_db()
    assert simulation.status == S.RUNNING


def test_the_nan_guard_can_be_turned_off(user):
    simulation, machine = running(user, guards={"nan": False})
    response = send(agent_client(machine), simulation, [(1, "NaN")])
    assert "details" not in assert_error(response, 400, "invalid")
    simulation.refresh_from_db()
    assert simulation.status == S.RUNNING


def test_a_non_finite_value_for_an_ended_run_is_only_refused(user):
    simulation, machine = running(user)
    services.simulation_finish(simulation=simulation)
    assert "details" not in assert_error(send(api_for(user), simulation, [(1, "NaN")]), 400)
    simulation.refresh_from_db()
    assert simulation.status == S.FINISHED and simulation.stopped_by == ""


def api_for(user):
    from tests.factories import token_client

    return token_client(user)


# --- divergence and plateau ----------------------------------------------------------------------


def test_divergence_fails_the_run_and_keeps_the_points(user):
    simulation, machine = running(user, guards={"divergence": {"metric": "loss", "factor": 10}})
    agent = agent_client(machine)
    assert send(agent, simulation, [(0, 2.0), (1, 0.5), (2, 0.4)]).status_code == 200
    simulation.refresh_from_db()
    assert simulation.status == S.RUNNING
    assert simulation.guard_state["divergence_best"] == 0.4
    assert send(agent, simulation, [(3, 3.9), (4, 4.5)]).json() == {"stored": 2, "duplicates": 0}
    simulation = assert_stopped(simulation, machine, S.FAILED, "divergence")
    assert simulation.stop_step == 4
    assert simulation.stop_reason.startswith("diverged")
    assert ConvergencePoint.objects.filter(simulation=simulation).count() == 5


def test_a_spike_that_recovers_within_one_write_is_not_divergence(user):
    simulation, machine = running(user, guards={"divergence": {"factor": 10}})
    send(agent_client(machine), simulation, [(0, 1.0), (1, 50.0), (2, 0.9)])
    simulation.refresh_from_db()
    assert simulation.status == S.RUNNING


def test_a_plateau_finishes_the_run_early(user):
    plateau = {"metric": "loss", "window": 100, "min_delta": 0.01}
    simulation, machine = running(user, guards={"plateau": plateau}, max_duration=3600)
    agent = agent_client(machine)
    send(agent, simulation, [(s, 1.0 - s * 0.01) for s in range(50)])  # improving
    send(agent, simulation, [(s, 0.509 - s * 1e-5) for s in range(50, 149)])  # barely
    simulation.refresh_from_db()
    assert simulation.status == S.RUNNING
    send(agent, simulation, [(150, 0.505)])
    simulation = assert_stopped(simulation, machine, S.FINISHED, "plateau")
    assert simulation.stop_reason.startswith("plateau")
    assert simulation.failure_reason == ""
    assert simulation.stop_step == 150
    assert simulation.saved_hours > 0


def test_the_single_point_paths_run_the_guards_too(user):
    simulation, machine = running(user, guards={"divergence": {"factor": 2}})
    agent = agent_client(machine)
    for step, loss in [(0, 1.0), (1, 3.0)]:
        body = {"simulation_id": simulation.pk, "step": step, "loss_value": loss}
        assert agent.post("/convergence/data", body, format="json").status_code == 201
    assert_stopped(simulation, machine, S.FAILED, "divergence")


def test_a_write_without_point_guards_reads_no_guard_state(user):
    simulation, machine = running(user)
    points_ingest(simulation_id=simulation.pk, points=[Point(0, 1.0, timezone.now())])
    with CaptureQueriesContext(connection) as queries:
        points_ingest(simulation_id=simulation.pk, points=[Point(1, 2.0, timezone.now())])
    assert not [q for q in queries if "guard" in q["sql"]]


def test_a_guard_firing_after_the_run_finished_changes_nothing(user):
    simulation, machine = running(user, guards={"divergence": {"factor": 2}})
    send(agent_client(machine), simulation, [(0, 1.0)])
    with transaction.atomic():
        services.simulation_finish(simulation=simulation)
        guards.guards_on_points(simulation.pk, [guards.MetricSummary("loss", 1, 9.0, 9.0, 1, 9.0)])
    simulation.refresh_from_db()
    assert simulation.status == S.FINISHED and simulation.stopped_by == ""


@pytest.mark.postgres
def test_a_guard_firing_while_the_run_finishes_leaves_one_final_state(user):
    """The agent's finish holds the row while a diverging write arrives: the write waits, then
    stores its points and finds the run ended; the run stays finished, stopped by nothing."""
    simulation, machine = running(user, guards={"divergence": {"factor": 2}})
    agent = agent_client(machine)
    send(agent, simulation, [(0, 1.0)])
    locked, done = threading.Event(), threading.Event()

    def finish():
        try:
            with transaction.atomic():
                services.simulation_finish(simulation=simulation)
                locked.set()
                done.wait(timeout=30)
        finally:
            connection.close()

    finisher = threading.Thread(target=finish)
    finisher.start()
    locked.wait(timeout=30)
    writer_result = {}

    def write():
        try:
            writer_result["response"] = send(agent_client(machine), simulation, [(1, 9.0)])
        finally:
            connection.close()

    writer = threading.Thread(target=write)
    writer.start()
    done.set()
    finisher.join()
    writer.join()
    simulation.refresh_from_db()
    assert simulation.status == S.FINISHED and simulation.stopped_by == ""
    assert writer_result["response"].status_code in (200, 403)


# --- max_duration and stall (the tick) -----------------------------------------------------------


def test_max_duration_times_the_run_out_on_its_next_heartbeat(user):
    simulation, machine = running(user, max_duration=60)
    set_times(simulation, started_at=timezone.now() - timedelta(seconds=61))
    answer = heartbeat(machine, simulation)
    assert answer["stop"] is True and answer["status"] == "timed_out"
    simulation = assert_stopped(simulation, machine, S.TIMED_OUT, "max_duration")
    assert simulation.saved_hours == 0 and simulation.saved_cost == 0


def test_max_duration_times_the_run_out_on_the_tick(user):
    simulation, machine = running(user, max_duration=60)
    points_ingest(simulation_id=simulation.pk, points=[Point(41, 1.0, timezone.now())])
    later = timezone.now() + timedelta(seconds=61)
    assert time_out_overdue(now=later) == [simulation.pk]
    simulation = assert_stopped(simulation, machine, S.TIMED_OUT, "max_duration")
    assert simulation.stop_step == 41
    assert time_out_overdue(now=later) == []


def test_a_timed_out_run_is_final_and_cannot_be_finished(user):
    simulation, machine = running(user, max_duration=1)
    time_out_overdue(now=timezone.now() + timedelta(seconds=2))
    response = agent_client(machine).post(f"/simulations/{simulation.pk}/finish")
    assert assert_error(response, 409, "invalid_transition")["details"] == {
        "current_status": "timed_out"
    }


def test_a_run_that_heartbeats_without_new_steps_is_stalled(user):
    simulation, machine = running(user, guards={"stall_seconds": 300})
    points_ingest(simulation_id=simulation.pk, points=[Point(9, 1.0, timezone.now())])
    now = timezone.now()
    assert guards.guards_on_tick(now=now) == []  # it starts watching: step 9 seen now
    points_ingest(simulation_id=simulation.pk, points=[Point(10, 1.0, timezone.now())])
    assert guards.guards_on_tick(now=now + timedelta(seconds=200)) == []  # it moved
    Simulation.objects.filter(pk=simulation.pk).update(
        last_heartbeat_at=now + timedelta(seconds=490)
    )
    assert guards.guards_on_tick(now=now + timedelta(seconds=499)) == []
    assert guards.guards_on_tick(now=now + timedelta(seconds=501)) == [simulation.pk]
    simulation = assert_stopped(simulation, machine, S.FAILED, "stall")
    assert simulation.stop_step == 10 and simulation.stop_reason.startswith("stalled")


def test_a_silent_run_is_left_to_the_reaper_not_the_stall_guard(user, settings):
    simulation, _ = running(user, guards={"stall_seconds": 10})
    now = timezone.now()
    guards.guards_on_tick(now=now)
    later = now + timedelta(seconds=settings.SIMSCHED_HEARTBEAT_TIMEOUT + 5)
    assert guards.guards_on_tick(now=later) == []


def test_the_scheduler_pass_reports_every_step(user):
    simulation, _ = running(user, max_duration=5)
    done = scheduler_pass(now=timezone.now() + timedelta(seconds=6))
    assert done["timed_out"] == [simulation.pk]
    assert set(done) == {
        "requeued",
        "failed",
        "timed_out",
        "stalled",
        "preempted",
        "preempting",
        "assigned",
    }


def test_the_stop_is_in_the_socket_payload(user):
    from simulations.events import simulation_payload

    simulation, machine = running(user, max_duration=5)
    time_out_overdue(now=timezone.now() + timedelta(seconds=6))
    simulation.refresh_from_db()
    payload = simulation_payload(simulation)
    assert payload["status"] == "timed_out" and payload["stopped_by"] == "max_duration"
    assert payload["saved_hours"] == "0.0000"
