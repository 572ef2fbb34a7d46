"""Preemption by priority: a waiting higher-priority simulation makes the cheapest lower-priority
preemptible run stop; after its grace that run is requeued (not a failed attempt), keeps its
points and resumes; the machine never holds two."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from convergence.services import Point, points_ingest
from machines.models import Machine
from simulations import services
from simulations.housekeeping import end_preemptions, preempt_for_waiting, scheduler_pass
from simulations.models import Simulation
from tests.factories import agent_client, make_machine, make_simulation

pytestmark = pytest.mark.django_db(transaction=True)
S = Simulation.Status


def running_on(machine, **fields) -> Simulation:
    simulation = make_simulation(**fields)
    simulation.refresh_from_db()
    assert simulation.machine_id == machine.pk
    return services.simulation_start(simulation=simulation)


def refreshed(*simulations):
    for simulation in simulations:
        simulation.refresh_from_db()
    return simulations


def heartbeat(machine, simulation) -> dict:
    return agent_client(machine).post(f"/simulations/{simulation.pk}/heartbeat").json()


def active_on(machine) -> list[int]:
    return list(
        Simulation.objects.filter(machine=machine, status__in=Simulation.ACTIVE).values_list(
            "pk", flat=True
        )
    )


def test_a_waiting_high_priority_run_preempts_a_preemptible_one_after_its_grace(api, user):
    machine = make_machine()
    victim = running_on(machine, owner=user, priority=0, preemptible=True, preempt_grace=60)
    points_ingest(simulation_id=victim.pk, points=[Point(s, 1.0, timezone.now()) for s in range(5)])
    urgent = make_simulation(owner=user, priority=10)

    assert preempt_for_waiting() == [(victim.pk, urgent.pk)]
    assert heartbeat(machine, victim) == {
        "id": victim.pk,
        "status": "running",
        "stop": True,
        "preempt": True,
    }
    assert active_on(machine) == [victim.pk]  # the waiter is not placed beside it
    reason = api.get(f"/simulations/{urgent.pk}").json()["wait_reason"]
    assert reason["code"] == "preempting" and victim.name in reason["message"]
    assert preempt_for_waiting() == []  # one victim per waiter

    assert end_preemptions(now=timezone.now() + timedelta(seconds=30)) == []
    assert end_preemptions(now=timezone.now() + timedelta(seconds=61)) == [victim.pk]
    victim, urgent = refreshed(victim, urgent)
    assert (urgent.status, urgent.machine_id) == (S.SCHEDULED, machine.pk)
    assert victim.status == S.PENDING
    assert (victim.attempts, victim.preemptions) == (0, 1)
    body = api.get(f"/simulations/{victim.pk}").json()
    assert body["resume_step"] == 5 and body["progress"]["points"] == 5


def test_the_preempted_run_resumes_from_its_last_step_when_placed_again(user):
    machine = make_machine()
    victim = running_on(machine, owner=user, preemptible=True, preempt_grace=0)
    points_ingest(simulation_id=victim.pk, points=[Point(41, 1.0, timezone.now())])
    urgent = make_simulation(owner=user, priority=5)
    preempt_for_waiting()
    end_preemptions()
    other = make_machine()
    claim = agent_client(other).post("/agent/claim")
    assert claim.status_code == 200
    assert claim.json()["id"] == victim.pk and claim.json()["resume_step"] == 42
    start = agent_client(other).post(f"/simulations/{victim.pk}/start")
    assert start.json()["resume_step"] == 42
    urgent.refresh_from_db()
    assert urgent.machine_id == machine.pk


def test_an_agent_reporting_failure_during_preemption_is_requeued_at_once(user):
    machine = make_machine()
    victim = running_on(machine, owner=user, preemptible=True, preempt_grace=600)
    urgent = make_simulation(owner=user, priority=5)
    preempt_for_waiting()
    response = agent_client(machine).post(
        f"/simulations/{victim.pk}/fail", {"reason": "killed by SIGTERM"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["status"] == "pending" and response.json()["attempts"] == 0
    urgent.refresh_from_db()
    assert urgent.machine_id == machine.pk


def test_a_preempted_run_whose_agent_went_quiet_is_requeued_without_a_failed_attempt(
    user, settings
):
    from simulations.housekeeping import reap_silent

    machine = make_machine()
    victim = running_on(machine, owner=user, preemptible=True, preempt_grace=3600)
    urgent = make_simulation(owner=user, priority=5)
    preempt_for_waiting()
    later = timezone.now() + timedelta(seconds=settings.SIMSCHED_HEARTBEAT_TIMEOUT + 1)
    assert reap_silent(now=later) == {"requeued": [victim.pk], "failed": []}
    victim, urgent = refreshed(victim, urgent)
    assert (victim.status, victim.attempts, victim.preemptions) == (S.PENDING, 0, 1)
    assert urgent.machine_id == machine.pk


def test_only_preemptible_lower_priority_runs_are_preempted(user):
    machine = make_machine()
    running_on(machine, owner=user, priority=0, preemptible=False)
    make_simulation(owner=user, priority=10)
    assert preempt_for_waiting() == []


def test_a_run_of_equal_priority_is_not_preempted(user):
    machine = make_machine()
    equal = running_on(machine, owner=user, priority=10, preemptible=True)
    make_simulation(owner=user, priority=10)
    assert preempt_for_waiting() == []
    equal.refresh_from_db()
    assert equal.preempt_requested_at is None


def test_the_cheapest_victim_is_chosen(user):
    dear = make_machine(hourly_cost=Decimal("90.00"))
    dear_run = running_on(dear, owner=user, preemptible=True)
    cheap = make_machine(hourly_cost=Decimal("10.00"))
    cheap_run = running_on(cheap, owner=user, preemptible=True)
    urgent = make_simulation(owner=user, priority=3)
    assert preempt_for_waiting() == [(cheap_run.pk, urgent.pk)]
    dear_run.refresh_from_db()
    assert dear_run.preempt_requested_at is None


def test_no_preemption_for_a_run_that_does_not_fit_the_victims_machine(user):
    small = make_machine(gpu_count=1)
    running_on(small, owner=user, preemptible=True)
    make_simulation(owner=user, priority=5, required_gpus=8)
    assert preempt_for_waiting() == []


def test_cancelling_the_victim_during_its_preemption_frees_the_machine_for_the_waiter(api, user):
    machine = make_machine()
    victim = running_on(machine, owner=user, preemptible=True, preempt_grace=600)
    urgent = make_simulation(owner=user, priority=5)
    preempt_for_waiting()
    assert api.post(f"/simulations/{victim.pk}/cancel").json()["status"] == "cancelled"
    assert end_preemptions(now=timezone.now() + timedelta(seconds=601)) == []
    victim, urgent = refreshed(victim, urgent)
    assert victim.status == S.CANCELLED and victim.preemptions == 0
    assert (urgent.status, urgent.machine_id) == (S.SCHEDULED, machine.pk)
    assert services.simulation_preempt(simulation=victim, waiting=urgent) is None


def test_a_victim_in_a_draining_machine_is_not_preempted(user):
    machine = make_machine()
    running_on(machine, owner=user, preemptible=True)
    Machine.objects.filter(pk=machine.pk).update(status=Machine.Status.MAINTENANCE)
    make_simulation(owner=user, priority=5)
    assert preempt_for_waiting() == []


def test_the_scheduler_pass_preempts_and_then_places(user):
    machine = make_machine()
    victim = running_on(machine, owner=user, preemptible=True, preempt_grace=10)
    urgent = make_simulation(owner=user, priority=5)
    assert scheduler_pass()["preempting"] == [(victim.pk, urgent.pk)]
    done = scheduler_pass(now=timezone.now() + timedelta(seconds=11))
    assert done["preempted"] == [victim.pk]
    urgent.refresh_from_db()
    assert urgent.machine_id == machine.pk
    assert active_on(machine) == [urgent.pk]
