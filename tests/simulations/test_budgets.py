"""Budgets per owner: the scheduler starts nothing that would exceed a monthly budget or a GPU
cap, says why the work waits, and shows the use on the API."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from machines.models import Machine
from simulations import services
from simulations.budgets import month_start
from simulations.models import Budget, Simulation
from tests.factories import make_machine, make_simulation, make_user

pytestmark = pytest.mark.django_db(transaction=True)
S = Simulation.Status


def spent(owner, usd: str, *, when=None) -> Simulation:
    """A finished simulation of `owner` that cost `usd`, ended at `when` (now)."""
    simulation = make_simulation(owner=owner)
    Simulation.objects.filter(pk=simulation.pk).update(
        status=S.FINISHED, accrued_cost=Decimal(usd), finished_at=when or timezone.now()
    )
    return simulation


def status_of(simulation) -> str:
    simulation.refresh_from_db()
    return simulation.status


def test_the_gpu_cap_keeps_the_second_run_waiting_and_says_why(api, user):
    Budget.objects.create(user=user, gpu_cap=8)
    make_machine(gpu_count=8)
    make_machine(gpu_count=8)
    first = make_simulation(owner=user, required_gpus=8)
    second = make_simulation(owner=user, required_gpus=8)
    assert status_of(first) == S.SCHEDULED
    assert status_of(second) == S.PENDING
    reason = api.get(f"/simulations/{second.pk}").json()["wait_reason"]
    assert reason == {"code": "owner_gpu_cap", "message": "owner's GPU cap: 8 of 8 in use"}
    services.simulation_finish(simulation=services.simulation_start(simulation=first))
    assert status_of(second) == S.SCHEDULED


def test_another_owners_work_takes_the_machine_a_capped_owner_cannot_use(user, other_user):
    Budget.objects.create(user=user, gpu_cap=0)
    machine = make_machine(gpu_count=8, status=Machine.Status.MAINTENANCE)
    capped = make_simulation(owner=user, required_gpus=1, priority=10)
    other = make_simulation(owner=other_user, required_gpus=1)
    Machine.objects.filter(pk=machine.pk).update(status=Machine.Status.AVAILABLE)
    from simulations.scheduler import assign_pending

    assign_pending()
    assert (status_of(capped), status_of(other)) == (S.PENDING, S.SCHEDULED)


def test_the_monthly_budget_refuses_a_run_whose_limit_would_exceed_it(api, user):
    Budget.objects.create(user=user, monthly_budget=Decimal("1000"))
    spent(user, "812")
    make_machine(hourly_cost=Decimal("100.00"))
    too_long = make_simulation(owner=user, max_duration=3 * 3600)  # $300 > $188 left
    assert status_of(too_long) == S.PENDING
    reason = api.get(f"/simulations/{too_long.pk}").json()["wait_reason"]
    assert reason == {
        "code": "owner_budget",
        "message": "owner's monthly budget: $812 of $1,000 used",
    }
    short = make_simulation(owner=user, max_duration=3600)  # $100 fits
    assert status_of(short) == S.SCHEDULED


def test_a_running_limit_reserves_its_cost_against_the_budget(api, user):
    Budget.objects.create(user=user, monthly_budget=Decimal("150"))
    make_machine(hourly_cost=Decimal("100.00"))
    make_machine(hourly_cost=Decimal("100.00"))
    first = make_simulation(owner=user, max_duration=3600)
    second = make_simulation(owner=user, max_duration=3600)
    assert (status_of(first), status_of(second)) == (S.SCHEDULED, S.PENDING)
    message = api.get(f"/simulations/{second.pk}").json()["wait_reason"]["message"]
    assert message.startswith("owner's monthly budget: $0")
    assert "reserved by running work" in message


def test_a_spent_budget_stops_runs_without_a_limit_too(user):
    Budget.objects.create(user=user, monthly_budget=Decimal("50"))
    spent(user, "50")
    make_machine()
    assert status_of(make_simulation(owner=user)) == S.PENDING


def test_last_months_spend_does_not_count(user):
    Budget.objects.create(user=user, monthly_budget=Decimal("50"))
    spent(user, "500", when=month_start(timezone.now()) - timedelta(seconds=1))
    make_machine()
    assert status_of(make_simulation(owner=user)) == S.SCHEDULED


def test_a_group_budget_counts_every_member_together(user, other_user):
    team = Group.objects.create(name="vision")
    user.groups.add(team)
    other_user.groups.add(team)
    Budget.objects.create(group=team, gpu_cap=8)
    make_machine(gpu_count=8)
    make_machine(gpu_count=8)
    mine = make_simulation(owner=user, required_gpus=8)
    theirs = make_simulation(owner=other_user, required_gpus=8)
    assert (status_of(mine), status_of(theirs)) == (S.SCHEDULED, S.PENDING)
    theirs.refresh_from_db()
    from simulations.selectors import simulation_wait_reasons

    reason = simulation_wait_reasons([theirs])[theirs.pk]
    assert reason["message"] == "group vision's GPU cap: 8 of 8 in use"


def test_the_api_shows_my_budget_and_staff_sees_all(api, staff_api, user, other_user):
    Budget.objects.create(user=user, monthly_budget=Decimal("1000"), gpu_cap=16)
    Budget.objects.create(user=other_user, gpu_cap=4)
    spent(user, "12.5")
    mine = api.get("/budgets/mine").json()
    assert len(mine) == 1
    assert mine[0]["user"] == "engineer"
    assert mine[0]["monthly_budget"] == "1000.00" and mine[0]["spent"] == "12.50"
    assert mine[0]["gpu_cap"] == 16 and mine[0]["gpus_in_use"] == 0
    assert api.get("/budgets").json() == mine
    assert len(staff_api.get("/budgets/").json()) == 2


def test_budgets_need_a_signed_in_caller(anon_api):
    assert anon_api.get("/budgets").status_code in (401, 403)


def test_a_budget_is_for_a_user_or_a_group_not_both_nor_neither(user):
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        Budget.objects.create(monthly_budget=Decimal("1"))
    group = Group.objects.create(name="g")
    with pytest.raises(IntegrityError), transaction.atomic():
        Budget.objects.create(user=user, group=group)


def test_the_budget_admin_lists_use(client, staff, user):
    Budget.objects.create(user=user, monthly_budget=Decimal("10"))
    client.force_login(staff)
    response = client.get("/admin/simulations/budget/")
    assert response.status_code == 200
    assert b"Spent this month" in response.content


def test_owners_without_a_budget_are_not_limited(user):
    other = make_user("free-spender")
    make_machine()
    assert status_of(make_simulation(owner=other, max_duration=10**6)) == S.SCHEDULED
