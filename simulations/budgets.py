"""Reads of owners' budgets: what they spent this month, what they hold, and whether starting
one more simulation would exceed a monthly budget or a GPU cap.

Spend is the per-simulation `cost` (hourly cost x time on a machine, earlier placements
included) of the simulations that held a machine this calendar month (UTC); a run that spans two
months counts in the month it ends. A running simulation with a `max_duration` also reserves
what the rest of its limit would cost, so starts never add up past the budget. One without a
limit counts at what it has spent so far.
"""

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db.models import Q
from django.utils import timezone

from simulations.models import Budget, Simulation

BUDGET_FIELDS = ("accrued_cost", "hourly_cost", "scheduled_at", "started_at", "finished_at")


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def worst_case_cost(simulation: Simulation, hourly_cost: Decimal | None) -> Decimal:
    """What starting `simulation` now commits at `hourly_cost`: its whole max_duration, or
    nothing known in advance."""
    if simulation.max_duration is None or hourly_cost is None:
        return Decimal("0")
    return hourly_cost * Decimal(simulation.max_duration) / Decimal(3600)


@dataclass
class Usage:
    budget: Budget
    members: set[int]
    spent: Decimal = Decimal("0")
    reserved: Decimal = Decimal("0")  # the rest of running simulations' max_duration
    gpus: int = 0

    @property
    def label(self) -> str:
        return "owner's" if self.budget.user_id else f"group {self.budget.group.name}'s"

    def as_dict(self) -> dict:
        budget = self.budget
        return {
            "id": budget.pk,
            "user": budget.user.username if budget.user_id else None,
            "group": budget.group.name if budget.group_id else None,
            "month_start": None,
            "monthly_budget": budget.monthly_budget,
            "spent": self.spent.quantize(Decimal("0.01")),
            "reserved": self.reserved.quantize(Decimal("0.01")),
            "gpu_cap": budget.gpu_cap,
            "gpus_in_use": self.gpus,
        }


def _money(value: Decimal) -> str:
    value = value.quantize(Decimal("0.01"))
    return f"${value:,.0f}" if value == value.to_integral() else f"${value:,.2f}"


@dataclass
class BudgetBook:
    """The budgets that apply to a set of owners and what each has used, for one scheduler
    pass or one page of wait reasons. `charge` counts a start made during the pass."""

    now: datetime = field(default_factory=timezone.now)
    lock: bool = False
    usages: list[Usage] = field(default_factory=list)
    by_owner: dict[int, list[Usage]] = field(default_factory=dict)
    blocked_owners: set[int] = field(default_factory=set)  # budgets locked by another assigner
    loaded_owners: set[int] = field(default_factory=set)
    loaded_budgets: set[int] = field(default_factory=set)

    def load(self, owner_ids) -> None:
        new = {o for o in owner_ids if o is not None} - self.loaded_owners
        if not new:
            return
        self.loaded_owners |= new
        groups = (
            get_user_model()
            .groups.through.objects.filter(user_id__in=new)
            .values_list("group_id", flat=True)
        )
        query = Budget.objects.filter(Q(user_id__in=new) | Q(group_id__in=list(groups)))
        query = query.exclude(pk__in=self.loaded_budgets)
        query = query.select_related("user", "group").order_by("id")
        if self.lock:
            locked = list(query.select_for_update(skip_locked=True, of=("self",)))
            missed = set(query.values_list("id", flat=True)) - {b.pk for b in locked}
            if missed:
                self._block(Budget.objects.filter(pk__in=missed))
            budgets = locked
        else:
            budgets = list(query)
        if budgets:
            self._measure(budgets)

    def _block(self, budgets) -> None:
        through = get_user_model().groups.through.objects
        for budget in budgets:
            if budget.user_id:
                self.blocked_owners.add(budget.user_id)
            else:
                members = through.filter(group_id=budget.group_id)
                self.blocked_owners.update(members.values_list("user_id", flat=True))

    def _measure(self, budgets: list[Budget]) -> None:
        through = get_user_model().groups.through.objects
        for budget in budgets:
            self.loaded_budgets.add(budget.pk)
            if budget.user_id:
                members = {budget.user_id}
            else:
                members = set(
                    through.filter(group_id=budget.group_id).values_list("user_id", flat=True)
                )
            usage = Usage(budget, members)
            self._add_usage(usage)
            self.usages.append(usage)
            for member in members:
                self.by_owner.setdefault(member, []).append(usage)

    def _add_usage(self, usage: Usage) -> None:
        start = month_start(self.now)
        held = (
            Q(status__in=Simulation.ACTIVE)
            | Q(finished_at__gte=start)
            | Q(status=Simulation.Status.PENDING, accrued_cost__gt=0, updated_at__gte=start)
        )
        rows = Simulation.objects.filter(held, owner_id__in=usage.members).only(
            "status", "required_gpus", "max_duration", *BUDGET_FIELDS
        )
        for simulation in rows:
            usage.spent += simulation.cost
            if simulation.status in Simulation.ACTIVE:
                usage.gpus += simulation.required_gpus
                _, left = simulation.unspent_against_limit()
                usage.reserved += left or Decimal("0")

    def refusal(self, simulation: Simulation, hourly_cost: Decimal | None) -> dict | None:
        """Why starting `simulation` at `hourly_cost` would exceed a budget (a wait reason), or
        None when it fits every budget that applies to its owner."""
        owner = simulation.owner_id
        if owner is None:
            return None
        if owner in self.blocked_owners:
            return {"code": "owner_budget", "message": "Owner's budget is being updated."}
        for usage in self.by_owner.get(owner, []):
            budget = usage.budget
            gpus = usage.gpus + simulation.required_gpus
            if budget.gpu_cap is not None and gpus > budget.gpu_cap:
                return {
                    "code": "owner_gpu_cap",
                    "message": f"{usage.label} GPU cap: {usage.gpus} of {budget.gpu_cap} in use",
                }
            if budget.monthly_budget is None:
                continue
            used = usage.spent + usage.reserved
            worst = worst_case_cost(simulation, hourly_cost)
            limit = budget.monthly_budget
            if used + worst > limit or (not worst and used >= limit):
                spent = _money(usage.spent)
                message = f"{usage.label} monthly budget: {spent} of {_money(limit)} used"
                if usage.reserved:
                    message += f" ({_money(usage.reserved)} reserved by running work)"
                return {"code": "owner_budget", "message": message}
        return None

    def charge(self, simulation: Simulation, hourly_cost: Decimal | None) -> None:
        for usage in self.by_owner.get(simulation.owner_id, []):
            usage.gpus += simulation.required_gpus
            usage.reserved += worst_case_cost(simulation, hourly_cost)


def budget_usage(*, user=None, now: datetime | None = None) -> list[dict]:
    """Every budget with its use this month, or only those that apply to `user`."""
    book = BudgetBook(now=now or timezone.now())
    if user is not None:
        book.load([user.pk])
    else:
        budgets = list(Budget.objects.select_related("user", "group").order_by("id"))
        book._measure(budgets)
    start = month_start(book.now).isoformat()
    return [{**usage.as_dict(), "month_start": start} for usage in book.usages]
