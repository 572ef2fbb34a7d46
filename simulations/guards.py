"""Guards: the server stops a run whose metrics say it is wasting its machine.

- `nan` (on by default): a write carrying a non-finite value from the simulation's agent or
  owner is refused as always, and the run fails ("non-finite <metric> at step N").
- `divergence` {metric, factor}: the latest value exceeds factor x the best (lowest) so far ->
  failed, "diverged". Only while the best is positive (a ratio of a negative best means nothing).
- `plateau` {metric, window, min_delta}: no value has beaten the reference best by min_delta for
  `window` steps -> finished early, "plateau". The reference best is the last value that beat
  the one before it by min_delta, so the check is O(1) per write.
- `stall_seconds`: heartbeats arrive but no new step for that long -> failed, "stalled"
  (evaluated on the scheduler's tick).

Ingestion calls `guards_on_points` inside the write's transaction with a `MetricSummary` per
series it stored. A simulation without plateau/divergence guards costs no query there (see
`guard_rules.cached_point_guards`); one with them pays one locked read and one update.
"""

import math
from datetime import datetime, timedelta
from typing import NamedTuple

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from convergence.selectors import simulation_point_stats
from simsched.exceptions import ApplicationError
from simulations import services
from simulations.guard_rules import METRIC_NAME, cached_point_guards
from simulations.models import Simulation
from simulations.permissions import can_trip_nan_guard

S, BY = Simulation.Status, Simulation.StoppedBy

REASON_NAN = "non-finite {metric} at step {step}"
REASON_DIVERGED = (
    "diverged: {metric} {value:.6g} at step {step} exceeds {factor:g} x the best {best:.6g}"
)
REASON_PLATEAU = (
    "plateau: {metric} improved by less than {min_delta:g} over {window} steps "
    "(best {best:.6g} at step {best_step})"
)
REASON_STALLED = "stalled: no new step for {seconds}s while its agent kept heartbeating"


class MetricSummary(NamedTuple):
    """What one write stored of one series."""

    metric: str
    last_step: int
    last_value: float
    min_value: float
    min_step: int
    max_value: float


def summarize(metric: str, points) -> MetricSummary | None:
    """The summary of (step, value, ...) tuples stored by one write (None for none)."""
    last = low = high = None
    for point in points:
        step, value = point[0], point[1]
        if last is None or step > last[0]:
            last = (step, value)
        if low is None or value < low[1] or (value == low[1] and step < low[0]):
            low = (step, value)
        if high is None or value > high:
            high = value
    if last is None:
        return None
    return MetricSummary(metric, last[0], last[1], low[1], low[0], high)


def watches_points(simulation_id: int) -> bool:
    """Whether ingestion must summarize what it stores for this simulation (no query when this
    process read the answer within SIMSCHED_GUARD_CACHE_SECONDS)."""
    return cached_point_guards(simulation_id) is not None


def guards_on_points(simulation_id: int, summaries: list[MetricSummary]) -> None:
    """Evaluate the plateau and divergence guards after a write stored points; call inside the
    write's transaction. A guard that fires stops the run (its machine is freed at commit)."""
    config = cached_point_guards(simulation_id)
    if config is None:
        return
    metrics = {guard["metric"] for guard in config.values()}
    relevant = {s.metric: s for s in summaries if s is not None and s.metric in metrics}
    if relevant:
        with transaction.atomic():
            _evaluate(simulation_id, relevant)


def _evaluate(simulation_id: int, relevant: dict[str, MetricSummary]) -> None:
    simulation = (
        Simulation.objects.select_for_update(no_key=True)
        .only("status", "guards", "guard_state", "max_duration")
        .filter(pk=simulation_id)
        .first()
    )
    if simulation is None or simulation.status not in Simulation.ACTIVE:
        return
    state = dict(simulation.guard_state)
    stop = _divergence(simulation.guards, state, relevant) or _plateau(
        simulation.guards, state, relevant
    )
    if state != simulation.guard_state:
        Simulation.objects.filter(pk=simulation_id).update(guard_state=state)
    if stop is not None:
        target, stopped_by, reason, step = stop
        services.simulation_stop(
            simulation=simulation, target=target, stopped_by=stopped_by, reason=reason, step=step
        )


def _divergence(guards: dict, state: dict, relevant: dict) -> tuple | None:
    guard = guards.get("divergence")
    summary = relevant.get(guard["metric"]) if guard else None
    if summary is None:
        return None
    best = min(state.get("divergence_best", math.inf), summary.min_value)
    state["divergence_best"] = best
    if best > 0 and summary.last_value > guard["factor"] * best:
        reason = REASON_DIVERGED.format(
            metric=summary.metric,
            value=summary.last_value,
            step=summary.last_step,
            factor=guard["factor"],
            best=best,
        )
        return S.FAILED, BY.DIVERGENCE, reason, summary.last_step
    return None


def _plateau(guards: dict, state: dict, relevant: dict) -> tuple | None:
    guard = guards.get("plateau")
    summary = relevant.get(guard["metric"]) if guard else None
    if summary is None:
        return None
    best, best_step = state.get("plateau_best"), state.get("plateau_step")
    if best is None or summary.min_value < best - guard["min_delta"]:
        best, best_step = summary.min_value, summary.min_step
        state["plateau_best"], state["plateau_step"] = best, best_step
    if summary.last_step - best_step >= guard["window"]:
        reason = REASON_PLATEAU.format(
            metric=summary.metric,
            min_delta=guard["min_delta"],
            window=guard["window"],
            best=best,
            best_step=best_step,
        )
        return S.FINISHED, BY.PLATEAU, reason, summary.last_step
    return None


# --- nan: a refused write ------------------------------------------------------------------------


def _is_nonfinite(value) -> bool:
    if type(value) is float:
        return not math.isfinite(value)
    if type(value) is str and len(value) <= 20:
        try:
            return not math.isfinite(float(value))
        except ValueError:
            return False
    return False


def _metric_name(value) -> str:
    return value if type(value) is str and METRIC_NAME.match(value) else "loss"


def find_nonfinite(data) -> tuple[str, int | None] | None:
    """(metric, step) of the first non-finite value in a write body that was refused: NaN,
    Infinity or -Infinity as JSON literals or as strings, in a single point or a batch."""
    if not isinstance(data, dict):
        return None
    points = data.get("points")
    for item in points if isinstance(points, list) else [data]:
        if not isinstance(item, dict):
            continue
        step = item.get("step") if type(item.get("step")) is int else None
        if _is_nonfinite(item.get("loss_value")):
            return _metric_name(item.get("metric")), step
        values = item.get("values")
        if isinstance(values, dict):
            for name, value in values.items():
                if _is_nonfinite(value):
                    return _metric_name(name), step
    return None


ERR_STOPPED_BY_NAN = "Invalid input. The run was stopped by its nan guard: {reason}."


def nonfinite_refusal(exc, *, data, simulation_id, user) -> Exception:
    """The exception to answer a refused write with: `exc` itself, or, when the refusal was a
    non-finite value that stopped the run through `guards_on_nonfinite`, a 400 that says so."""
    found = find_nonfinite(data)
    if simulation_id is None and isinstance(data, dict):
        simulation_id = data.get("simulation_id")
    try:
        simulation_id = int(simulation_id)
    except (TypeError, ValueError):
        return exc
    if found is None or not 0 < simulation_id < 2**63:
        return exc
    metric, step = found
    if not guards_on_nonfinite(simulation_id, metric, step, user):
        return exc
    stopped = Simulation.objects.only("stop_reason", "stop_step", "status").get(pk=simulation_id)
    return ApplicationError(
        ERR_STOPPED_BY_NAN.format(reason=stopped.stop_reason),
        code="invalid",
        fields=getattr(exc, "detail", None),
        details={
            "stopped": True,
            "stopped_by": BY.NAN.value,
            "status": stopped.status,
            "stop_step": stopped.stop_step,
        },
    )


def guards_on_nonfinite(simulation_id: int, metric: str, step: int | None, user) -> bool:
    """A write carrying a non-finite value was refused: when it came from the simulation's
    agent or owner and the nan guard is on, the run fails. True when this stopped the run."""
    simulation = (
        Simulation.objects.only("status", "owner_id", "machine_id", "guards")
        .filter(pk=simulation_id)
        .first()
    )
    if simulation is None or simulation.status not in Simulation.ACTIVE:
        return False
    if not simulation.guards.get("nan") or not can_trip_nan_guard(user, simulation):
        return False
    if step is None:  # the server would have taken the next step
        last = simulation_point_stats([simulation_id]).get(simulation_id, {}).get("last_step")
        step = 0 if last is None else last + 1
    metric = _metric_name(metric)
    stopped = services.simulation_stop(
        simulation=simulation,
        target=S.FAILED,
        stopped_by=BY.NAN,
        reason=REASON_NAN.format(metric=metric, step=step),
        step=step,
    )
    return stopped is not None


# --- stall: the scheduler's tick -----------------------------------------------------------------


def guards_on_tick(*, now: datetime | None = None) -> list[int]:
    """Fail running simulations whose agent heartbeats but whose last step has not moved for
    their stall_seconds. Returns the ids it stopped."""
    now = now or timezone.now()
    alive_since = now - timedelta(seconds=settings.SIMSCHED_HEARTBEAT_TIMEOUT)
    watched = list(
        Simulation.objects.filter(status=S.RUNNING, guards__has_key="stall_seconds").only(
            "guards", "guard_state", "started_at", "last_heartbeat_at"
        )
    )
    if not watched:
        return []
    last_steps = simulation_point_stats([s.pk for s in watched])
    stopped = []
    for simulation in watched:
        if _stall(simulation, last_steps.get(simulation.pk, {}).get("last_step"), now, alive_since):
            stopped.append(simulation.pk)
    return stopped


@transaction.atomic
def _stall(simulation: Simulation, last_step, now: datetime, alive_since: datetime) -> bool:
    state = dict(simulation.guard_state)
    seconds = simulation.guards["stall_seconds"]
    if "stall_since" not in state or state.get("stall_step") != last_step:
        known = "stall_since" in state or last_step is not None
        since = now if known else (simulation.started_at or now)
        state.update(stall_step=last_step, stall_since=since.isoformat())
        Simulation.objects.filter(pk=simulation.pk, status=S.RUNNING).update(guard_state=state)
        if known:
            return False
    since = datetime.fromisoformat(state["stall_since"])
    heartbeating = simulation.last_heartbeat_at and simulation.last_heartbeat_at >= alive_since
    if (now - since).total_seconds() < seconds or not heartbeating:
        return False
    stopped = services.simulation_stop(
        simulation=simulation,
        target=S.FAILED,
        stopped_by=BY.STALL,
        reason=REASON_STALLED.format(seconds=seconds),
        step=last_step,
    )
    return stopped is not None
