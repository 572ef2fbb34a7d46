"""The assignment rules, the maintenance drain, silent agents, and the database's last word."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from machines.models import Machine
from machines.services import machine_set_status
from simulations import scheduler, services
from simulations.housekeeping import reap_silent
from simulations.models import Simulation
from simulations.scheduler import Assignment, assign_pending
from tests.factories import agent_client, make_machine, make_simulation

pytestmark = pytest.mark.django_db(transaction=True)

MAINTENANCE = Machine.Status.MAINTENANCE


def closed_machine(**fields) -> Machine:
    """A machine that takes no work until `open_fleet()`."""
    return make_machine(status=MAINTENANCE, **fields)


def open_fleet() -> list[Assignment]:
    """Every machine in maintenance becomes available at once, then one assignment pass."""
    Machine.objects.filter(status=MAINTENANCE).update(status=Machine.Status.AVAILABLE)
    return assign_pending()


def placed(simulation: Simulation) -> tuple[str, int | None]:
    simulation.refresh_from_db()
    return simulation.status, simulation.machine_id


def later_than_the_timeout(settings, extra: int = 1):
    return timezone.now() + timedelta(seconds=settings.SIMSCHED_HEARTBEAT_TIMEOUT + extra)


# --- order ---------------------------------------------------------------------------------------


def test_higher_priority_runs_first():
    machine = closed_machine()
    low = make_simulation(priority=0)
    high = make_simulation(priority=5)
    negative = make_simulation(priority=-3)
    assert open_fleet() == [Assignment(high.pk, machine.pk)]
    assert placed(low) == ("pending", None)
    services.simulation_cancel(simulation=high)
    assert placed(low) == ("scheduled", machine.pk)
    assert placed(negative) == ("pending", None)


def test_first_in_first_out_within_a_priority():
    machine = closed_machine()
    first, second, third = (make_simulation(priority=2) for _ in range(3))
    open_fleet()
    order = []
    for _ in range(3):
        running = Simulation.objects.get(machine=machine, status__in=Simulation.ACTIVE)
        order.append(running.pk)
        services.simulation_finish(simulation=services.simulation_start(simulation=running))
    assert order == [first.pk, second.pk, third.pk]


def test_ties_in_created_at_are_broken_by_id():
    machine = closed_machine()
    sims = [make_simulation() for _ in range(3)]
    Simulation.objects.update(created_at=timezone.now() - timedelta(minutes=5))
    assert open_fleet() == [Assignment(sims[0].pk, machine.pk)]


def test_every_free_machine_is_filled_in_one_pass():
    machines = [closed_machine() for _ in range(3)]
    sims = [make_simulation() for _ in range(5)]
    assigned = open_fleet()
    assert {a.simulation_id for a in assigned} == {s.pk for s in sims[:3]}
    assert {a.machine_id for a in assigned} == {m.pk for m in machines}
    assert Machine.objects.filter(status="busy").count() == 3


# --- fit and cost --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requirement", "small", "big"),
    [
        ({"required_gpus": 4}, {"gpu_count": 2}, {"gpu_count": 8}),
        ({"required_memory": 512}, {"memory": 256}, {"memory": 1024}),
        ({"required_cpu_cores": 64}, {"cpu_cores": 32}, {"cpu_cores": 128}),
    ],
)
def test_a_simulation_only_goes_to_a_machine_that_fits(requirement, small, big):
    cheap_small = closed_machine(hourly_cost=Decimal("1.00"), **small)
    dear_big = closed_machine(hourly_cost=Decimal("50.00"), **big)
    needy = make_simulation(**requirement)
    assert open_fleet() == [Assignment(needy.pk, dear_big.pk)]
    easy = make_simulation()
    assert placed(easy) == ("scheduled", cheap_small.pk)


def test_requirements_equal_to_the_capacity_fit():
    machine = make_machine(gpu_count=8, memory=512, cpu_cores=96)
    exact = make_simulation(required_gpus=8, required_memory=512, required_cpu_cores=96)
    assert placed(exact) == ("scheduled", machine.pk)


def test_the_cheapest_fitting_machine_is_chosen():
    mid = closed_machine(hourly_cost=Decimal("20.00"))
    cheapest = closed_machine(hourly_cost=Decimal("10.00"))
    dearest = closed_machine(hourly_cost=Decimal("30.00"))
    first, second, third = (make_simulation() for _ in range(3))
    assert open_fleet() == [
        Assignment(first.pk, cheapest.pk),
        Assignment(second.pk, mid.pk),
        Assignment(third.pk, dearest.pk),
    ]
    assert Simulation.objects.get(pk=first.pk).hourly_cost == Decimal("10.00")


def test_a_simulation_too_big_for_free_machines_does_not_block_smaller_ones():
    make_machine(gpu_count=8)
    make_simulation(required_gpus=8)  # takes the big machine
    small = closed_machine(gpu_count=0)
    big_waiting = make_simulation(required_gpus=8, priority=10)
    small_waiting = make_simulation(required_gpus=0)
    assert open_fleet() == [Assignment(small_waiting.pk, small.pk)]
    assert placed(big_waiting) == ("pending", None)


def test_a_simulation_nothing_fits_waits_forever_without_blocking():
    make_machine(gpu_count=8)
    huge = make_simulation(required_gpus=64, priority=100)
    normal = make_simulation(required_gpus=1)
    assert placed(huge) == ("pending", None)
    assert placed(normal)[0] == "scheduled"


def test_the_queue_is_scanned_past_a_chunk_of_simulations_that_do_not_fit(monkeypatch):
    monkeypatch.setattr(scheduler, "QUEUE_CHUNK_MAX", 2)
    make_machine(name="big", gpu_count=8)
    make_simulation(required_gpus=8)  # the big machine is busy from here on
    small = closed_machine(gpu_count=1)
    for _ in range(5):
        make_simulation(required_gpus=8, priority=5)
    last = make_simulation(required_gpus=1)
    assert open_fleet() == [Assignment(last.pk, small.pk)]


def test_assignment_with_nothing_to_do_assigns_nothing():
    assert assign_pending() == []
    make_machine()
    assert assign_pending() == []


# --- pinning -------------------------------------------------------------------------------------


def test_a_pinned_simulation_runs_only_on_its_machine():
    make_machine(hourly_cost=Decimal("1.00"))
    pinned = make_machine(hourly_cost=Decimal("99.00"))
    simulation = make_simulation(pinned_machine=pinned)
    assert placed(simulation) == ("scheduled", pinned.pk)


def test_a_pinned_simulation_waits_while_its_machine_is_busy():
    pinned = make_machine(hourly_cost=Decimal("99.00"))
    spare = make_machine(hourly_cost=Decimal("1.00"))
    holder = make_simulation(pinned_machine=pinned)
    waiting = make_simulation(pinned_machine=pinned, priority=50)
    assert placed(waiting) == ("pending", None)
    assert Machine.objects.get(pk=spare.pk).status == "available"
    services.simulation_finish(simulation=services.simulation_start(simulation=holder))
    assert placed(waiting) == ("scheduled", pinned.pk)


def test_a_pinned_simulation_waits_while_its_machine_is_in_maintenance():
    make_machine(hourly_cost=Decimal("1.00"))
    pinned = closed_machine()
    waiting = make_simulation(pinned_machine=pinned)
    assert placed(waiting) == ("pending", None)
    machine_set_status(machine=pinned, status="available")
    assert placed(waiting) == ("scheduled", pinned.pk)


def test_a_waiting_pinned_simulation_does_not_block_the_others():
    pinned = make_machine()
    make_simulation(pinned_machine=pinned)
    make_simulation(pinned_machine=pinned, priority=100)
    free = closed_machine()
    other = make_simulation(priority=-1)
    assert open_fleet() == [Assignment(other.pk, free.pk)]


# --- maintenance drain ---------------------------------------------------------------------------


def test_a_busy_machine_put_in_maintenance_keeps_its_simulation_and_takes_no_more(user):
    machine = make_machine()
    running = services.simulation_start(simulation=make_simulation(owner=user))
    machine_set_status(machine=machine, status="maintenance")
    assert placed(running) == ("running", machine.pk)
    agent = agent_client(machine)
    assert agent.post(f"/simulations/{running.pk}/heartbeat").json()["stop"] is False
    waiting = make_simulation()
    assert agent.post(f"/simulations/{running.pk}/finish").status_code == 200
    assert Machine.objects.get(pk=machine.pk).status == "maintenance"
    assert placed(waiting) == ("pending", None)
    assert assign_pending() == []


def test_a_drained_machine_back_to_available_takes_work_at_once():
    machine = make_machine()
    running = services.simulation_start(simulation=make_simulation())
    machine_set_status(machine=machine, status="maintenance")
    services.simulation_finish(simulation=running)
    waiting = make_simulation()
    machine_set_status(machine=machine, status="available")
    assert placed(waiting) == ("scheduled", machine.pk)
    assert Machine.objects.get(pk=machine.pk).status == "busy"


def test_maintenance_on_a_busy_machine_and_back_keeps_it_busy():
    machine = make_machine()
    running = make_simulation()
    machine_set_status(machine=machine, status="maintenance")
    machine_set_status(machine=machine, status="available")
    assert Machine.objects.get(pk=machine.pk).status == "busy"
    assert placed(running) == ("scheduled", machine.pk)


# --- cancel --------------------------------------------------------------------------------------


def test_cancel_frees_the_machine_and_the_next_simulation_takes_it():
    machine = make_machine()
    first = services.simulation_start(simulation=make_simulation())
    second = make_simulation()
    services.simulation_cancel(simulation=first)
    assert placed(first) == ("cancelled", machine.pk)
    assert placed(second) == ("scheduled", machine.pk)


# --- silent agents -------------------------------------------------------------------------------


def test_a_simulation_that_heartbeats_is_not_reaped(settings):
    make_machine()
    simulation = services.simulation_start(simulation=make_simulation())
    assert reap_silent() == {"requeued": [], "failed": []}
    soon = timezone.now() + timedelta(seconds=settings.SIMSCHED_HEARTBEAT_TIMEOUT - 5)
    assert reap_silent(now=soon) == {"requeued": [], "failed": []}
    assert placed(simulation)[0] == "running"


def test_a_silent_agent_is_requeued_up_to_the_retry_limit_then_failed(settings):
    settings.SIMSCHED_MAX_RETRIES = 2
    machine = make_machine()
    simulation = services.simulation_start(simulation=make_simulation())
    for attempt in (1, 2):
        assert reap_silent(now=later_than_the_timeout(settings)) == {
            "requeued": [simulation.pk],
            "failed": [],
        }
        # Freed, then taken again at once by the same simulation: it is the only one waiting.
        simulation.refresh_from_db()
        assert (simulation.status, simulation.machine_id) == ("scheduled", machine.pk)
        assert simulation.attempts == attempt
    assert reap_silent(now=later_than_the_timeout(settings)) == {
        "requeued": [],
        "failed": [simulation.pk],
    }
    simulation.refresh_from_db()
    assert simulation.status == "failed"
    assert "silent" in simulation.failure_reason
    assert Machine.objects.get(pk=machine.pk).status == "available"


def test_a_silent_agents_machine_goes_to_the_next_in_the_queue(settings):
    machine = make_machine()
    silent = make_simulation()
    urgent = make_simulation(priority=10)
    reap_silent(now=later_than_the_timeout(settings))
    assert placed(urgent) == ("scheduled", machine.pk)
    silent.refresh_from_db()
    assert (silent.status, silent.machine_id, silent.attempts) == ("pending", None, 1)
    assert silent.scheduled_at is None and silent.hourly_cost is None


def test_with_a_zero_timeout_every_active_simulation_is_reaped(settings):
    settings.SIMSCHED_HEARTBEAT_TIMEOUT = 0
    settings.SIMSCHED_MAX_RETRIES = 0
    make_machine()
    make_machine()
    sims = [make_simulation() for _ in range(2)]
    services.simulation_start(simulation=sims[0])
    assert reap_silent() == {"requeued": [], "failed": [s.pk for s in sims]}
    assert list(Machine.objects.values_list("status", flat=True)) == ["available", "available"]


def test_a_reaped_simulation_in_a_drained_machine_leaves_it_in_maintenance(settings):
    machine = make_machine()
    simulation = make_simulation()
    machine_set_status(machine=machine, status="maintenance")
    reap_silent(now=later_than_the_timeout(settings))
    assert placed(simulation) == ("pending", None)
    assert Machine.objects.get(pk=machine.pk).status == "maintenance"


# --- the database refuses a double booking -------------------------------------------------------


def test_the_database_refuses_a_second_active_simulation_on_a_machine():
    machine = make_machine()
    make_simulation()
    with pytest.raises(IntegrityError), transaction.atomic():
        Simulation.objects.create(name="intruder", status="running", machine=machine)
    assert Simulation.objects.filter(machine=machine).count() == 1


@pytest.mark.parametrize("status", ["scheduled", "running"])
def test_the_database_refuses_an_update_that_double_books(status):
    machine = make_machine()
    make_simulation()
    other = make_simulation()
    with pytest.raises(IntegrityError), transaction.atomic():
        Simulation.objects.filter(pk=other.pk).update(status=status, machine=machine)
    assert placed(other) == ("pending", None)


def test_the_database_refuses_an_active_simulation_without_a_machine():
    with pytest.raises(IntegrityError), transaction.atomic():
        Simulation.objects.create(name="nowhere", status="scheduled")


def test_a_machine_keeps_any_number_of_ended_simulations():
    machine = make_machine()
    for _ in range(3):
        simulation = services.simulation_start(simulation=make_simulation())
        services.simulation_finish(simulation=simulation)
    Simulation.objects.create(name="old", status="failed", machine=machine)
    assert Simulation.objects.filter(machine=machine).count() == 4
