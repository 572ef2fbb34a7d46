"""Writes of convergence points. A point belongs to (simulation, metric, step); every path is
idempotent by (metric, step), keeps the step rollup current, hands the guards a summary of what
it stored, and broadcasts once, after commit, with the points it actually stored."""

import math
from dataclasses import dataclass

from django.db import OperationalError, connection, transaction
from django.utils import timezone

from convergence.models import DEFAULT_METRIC, MAX_STEP, ConvergencePoint
from convergence.stores import Point, Stored, free_step, store
from simsched.broadcast import broadcast, simulation_group
from simsched.db import is_postgres, is_storable_id
from simsched.exceptions import ConflictError, ForbiddenError, NotFoundError
from simulations import guards  # guards: the plateau/divergence check after each write
from simulations.models import Simulation
from simulations.permissions import ERR_REPORT, can_report_for, report_scope
from simulations.selectors import simulation_write_access

__all__ = ["MAX_BATCH_POINTS", "MAX_STEP", "Point", "IngestResult", "points_ingest", "point_add"]

MAX_BATCH_POINTS = 10_000  # values per request, whatever the number of metrics

ERR_SIMULATION_NOT_FOUND = "Simulation {simulation_id} does not exist."
ERR_STEP_CONFLICT = "Step {step} is already stored with a different loss value."
ERR_METRIC_STEP_CONFLICT = 'Step {step} of "{metric}" is already stored with a different value.'
ERR_BATCH_CONFLICT = (
    "{count} step(s) are already stored with different loss values; nothing was stored."
)
ERR_METRIC_BATCH_CONFLICT = (
    "{count} step(s) of {metrics} are already stored with different values; nothing was stored."
)
ERR_COMPACTED = (
    "Simulation {simulation_id} was compacted ({names}): its raw points are gone, so new points "
    "cannot be checked against them for repeats and conflicts; nothing was stored."
)
ERR_STEPS_EXHAUSTED = (
    'The series "{metric}" has reached the last step ({max_step}); send points with an '
    "explicit step or start a new simulation."
)


@dataclass(frozen=True)
class IngestResult:
    stored: int
    duplicates: int


def _same_value(a: float, b: float) -> bool:
    return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def _require_simulation(simulation_id: int) -> None:
    if not Simulation.objects.filter(pk=simulation_id).exists():
        raise NotFoundError(ERR_SIMULATION_NOT_FOUND.format(simulation_id=simulation_id))


def _store(simulation_id: int, points: list[Point]) -> Stored:
    """Insert what is new, creating the series the points name when they do not exist yet.
    The caller holds a transaction when the points name a series that may be new."""
    backend = store()
    with connection.cursor() as cursor:
        stored = backend.insert(cursor, simulation_id, points)
        if stored.compacted:  # the caller's transaction undoes what the write stored elsewhere
            _refuse_compacted(simulation_id, stored.compacted)
        missing = sorted({p.metric for p in points} - stored.series.keys())
        if not missing:
            return stored
        backend.create_series(cursor, simulation_id, missing)
        rest = [p for p in points if p.metric in missing]
        more = backend.insert(cursor, simulation_id, rest)
    if more.series.keys() != set(missing):
        _require_simulation(simulation_id)
    return Stored({**stored.series, **more.series}, {**stored.points, **more.points})


def _refuse_compacted(simulation_id: int, metrics) -> None:
    metrics = sorted(metrics)
    names = ", ".join(f'"{m}"' for m in metrics)
    raise ConflictError(
        ERR_COMPACTED.format(simulation_id=simulation_id, names=names),
        code="series_compacted",
        details={"metrics": metrics},
    )


def _after_store(simulation_id: int, points: list[Point]) -> None:
    """Inside the write: the guards see a summary per metric, then the sockets get the points
    (after commit)."""
    if not points:
        return
    _guards_on_points(simulation_id, points)
    ordered = sorted(points, key=lambda p: (p.step, p.metric))
    broadcast(
        simulation_group(simulation_id),
        {
            "type": "convergence.points",
            "simulation_id": simulation_id,
            "points": [_socket_point(p) for p in ordered],
        },
        recent_members=True,  # sockets catch up on what a stale answer skips (consumers.py)
    )


def _socket_point(point: Point) -> dict:
    """`{"step", "loss", "timestamp"}` as the chart endpoints give points, and its `metric`."""
    return {
        "step": point.step,
        "loss": point.loss_value,
        "timestamp": point.timestamp.isoformat(),
        "metric": point.metric,
    }


def metric_summaries(points: list[Point]) -> list[tuple]:
    """Per metric, in name order: (metric, last_step, last_value, min_value, min_step,
    max_value) of `points`, the fields of `simulations.guards.MetricSummary`."""
    summaries: dict[str, list] = {}
    for p in points:
        entry = summaries.get(p.metric)
        if entry is None:
            summaries[p.metric] = [
                p.metric,
                p.step,
                p.loss_value,
                p.loss_value,
                p.step,
                p.loss_value,
            ]
            continue
        if p.step > entry[1]:
            entry[1], entry[2] = p.step, p.loss_value
        if p.loss_value < entry[3]:
            entry[3], entry[4] = p.loss_value, p.step
        entry[5] = max(entry[5], p.loss_value)
    return [tuple(summaries[metric]) for metric in sorted(summaries)]


def _guards_on_points(simulation_id: int, points: list[Point]) -> None:
    """The plateau/divergence guards see a summary per metric
    of what the write stored; no query, nor summary, for a simulation without them."""
    if guards.watches_points(simulation_id):
        summaries = [guards.MetricSummary(*s) for s in metric_summaries(points)]
        guards.guards_on_points(simulation_id, summaries)


def points_ingest(*, simulation_id: int, points: list[Point]) -> IngestResult:
    """Store a batch idempotently by (metric, step). A value already stored the same counts as
    a duplicate; one stored different rejects the whole batch (409, naming the series),
    storing nothing."""

    def write() -> list[Point]:
        stored = _store(simulation_id, points)
        if len(stored.points) < len(points):
            if not stored.series:
                _require_simulation(simulation_id)
            _reject_conflicts(simulation_id, [p for p in points if _key(p) not in stored.points])
        new = [p for p in points if _key(p) in stored.points]
        _after_store(simulation_id, new)
        return new

    new = _in_transaction(write)
    return IngestResult(stored=len(new), duplicates=len(points) - len(new))


def _in_transaction(write):
    """`write()` in a transaction of its own, run again when PostgreSQL ends it to break a
    deadlock. Writers lock the series they touch in id order, but a series created inside a
    write (its first points) is locked out of that order, so two writers that each create a
    series the other then needs can cross, once per new series; the next try finds it
    committed. Inside a caller's transaction the error is the caller's."""
    for attempt in range(DEADLOCK_RETRIES + 1):
        try:
            with transaction.atomic():
                return write()
        except OperationalError as exc:
            if not _is_deadlock(exc) or attempt == DEADLOCK_RETRIES or connection.in_atomic_block:
                raise


def _is_deadlock(exc: OperationalError) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) == DEADLOCK_DETECTED


DEADLOCK_RETRIES = 2
DEADLOCK_DETECTED = "40P01"  # PostgreSQL's SQLSTATE


def _key(point: Point) -> tuple[str, int]:
    return point.metric, point.step


def _stored_values(simulation_id: int, repeated: list[Point]) -> dict[tuple[str, int], float]:
    found = ConvergencePoint.objects.filter(
        simulation_id=simulation_id,
        series__metric__in={p.metric for p in repeated},
        step__in={p.step for p in repeated},
    )
    return {(m, s): v for m, s, v in found.values_list("series__metric", "step", "loss_value")}


def _reject_conflicts(simulation_id: int, repeated: list[Point]) -> None:
    existing = _stored_values(simulation_id, repeated)
    conflicts = [
        {
            "metric": p.metric,
            "step": p.step,
            "stored_loss": existing[_key(p)],
            "sent_loss": p.loss_value,
        }
        for p in repeated
        if _key(p) in existing and not _same_value(existing[_key(p)], p.loss_value)
    ]
    if not conflicts:
        return
    metrics = sorted({c["metric"] for c in conflicts})
    if metrics == [DEFAULT_METRIC]:
        message = ERR_BATCH_CONFLICT.format(count=len(conflicts))
    else:
        names = ", ".join(f'"{m}"' for m in metrics)
        message = ERR_METRIC_BATCH_CONFLICT.format(count=len(conflicts), metrics=names)
    raise ConflictError(
        message,
        code="step_conflict",
        details={"metrics": metrics, "conflicts": conflicts[:100]},
    )


def require_report_access(user, simulation_id) -> None:
    """404 for an unknown simulation, 403 if `user` may not write its points."""
    simulation = simulation_write_access(simulation_id=simulation_id)
    if simulation is None:
        raise NotFoundError(ERR_SIMULATION_NOT_FOUND.format(simulation_id=simulation_id))
    if not can_report_for(user, simulation):
        raise ForbiddenError(ERR_REPORT)


def _next_step(cursor, simulation_id: int, metric: str) -> int:
    """The step after the series' last one, under the series' lock (created if new). A series
    at the last step is a 409: a larger step could not be stored."""
    backend = store()
    series_id = backend.lock_series(cursor, simulation_id, metric)
    if series_id is None:
        backend.create_series(cursor, simulation_id, [metric])
        series_id = backend.lock_series(cursor, simulation_id, metric)
        if series_id is None:
            raise NotFoundError(ERR_SIMULATION_NOT_FOUND.format(simulation_id=simulation_id))
    step = free_step(cursor, simulation_id, series_id)
    if step > MAX_STEP:
        raise ConflictError(
            ERR_STEPS_EXHAUSTED.format(metric=metric, max_step=MAX_STEP),
            code="steps_exhausted",
            details={"metric": metric, "last_step": step - 1},
        )
    return step


def point_add(
    *,
    simulation_id: int,
    loss_value: float,
    step: int | None = None,
    timestamp=None,
    metric: str = DEFAULT_METRIC,
    reporter=None,
) -> tuple[ConvergencePoint, bool]:
    """Store one point. Returns (point, created); re-sending a stored step with the same value
    returns the stored point, with a different value it is a 409. With `reporter` (the
    caller), a simulation it may not write points for is a 404 or 403 (`require_report_access`),
    checked inside the write's own statement on PostgreSQL.

    The hot path: on PostgreSQL a point is one statement in autocommit (the series lock, the
    insert and the rollup), one round trip, as long as its series exists; without a step it
    takes the series' `next_step` in that statement."""
    timestamp = timestamp or timezone.now()
    scope = None if reporter is None else report_scope(reporter)
    if is_postgres(connection) and is_storable_id(simulation_id):
        try:
            with connection.cursor() as cursor:
                if step is not None:
                    point = Point(step, loss_value, timestamp, metric)
                    written = store().insert_one(cursor, simulation_id, point, scope)
                else:
                    written = store().insert_next(
                        cursor, simulation_id, metric, loss_value, timestamp, scope
                    )
            if written is not None and (step is not None or written[2] is not None):
                # That one statement was the write (or found the step stored).
                series_id, point_step, point_id = written
                point = Point(point_step, loss_value, timestamp, metric)
                stored_points = {} if point_id is None else {(metric, point_step): point_id}
                return _single_point_result(
                    simulation_id, point, Stored({metric: series_id}, stored_points)
                )
            # No series yet, outside the caller's scope, or (without a step) no step left or
            # the step taken by a bulk load around the counter: the long way says which.
        except OperationalError as exc:
            # PostgreSQL ended the statement to break a deadlock: nothing of it was stored, and
            # the long way below retries it (`_in_transaction`). Inside a caller's
            # transaction the error is the caller's.
            if not _is_deadlock(exc) or connection.in_atomic_block:
                raise
    if reporter is not None:  # the one statement stored nothing: say why, or go the long way
        require_report_access(reporter, simulation_id)
    return _point_add_in_transaction(simulation_id, loss_value, step, timestamp, metric)


def _point_add_in_transaction(simulation_id: int, loss_value: float, step, timestamp, metric):
    """The long way of a single point: its step taken (when it has none) under the series'
    lock, and the series created when it is new, in one transaction."""

    def write():
        point_step = step
        if point_step is None:
            with connection.cursor() as cursor:
                point_step = _next_step(cursor, simulation_id, metric)
        point = Point(point_step, loss_value, timestamp, metric)
        return _single_point_result(simulation_id, point, _store(simulation_id, [point]))

    return _in_transaction(write)


def _single_point_result(simulation_id: int, point: Point, stored: Stored):
    point_id = stored.points.get(_key(point))
    if point_id is None:
        if not stored.series:
            _require_simulation(simulation_id)
        return _existing_point(simulation_id, point), False
    _after_store(simulation_id, [point])
    row = ConvergencePoint(
        id=point_id,
        simulation_id=simulation_id,
        series_id=stored.series[point.metric],
        step=point.step,
        loss_value=point.loss_value,
        timestamp=point.timestamp,
    )
    row.metric = point.metric
    return row, True


def _existing_point(simulation_id: int, point: Point) -> ConvergencePoint:
    existing = ConvergencePoint.objects.get(
        simulation_id=simulation_id, series__metric=point.metric, step=point.step
    )
    existing.metric = point.metric
    if not _same_value(existing.loss_value, point.loss_value):
        template = ERR_STEP_CONFLICT if point.metric == DEFAULT_METRIC else ERR_METRIC_STEP_CONFLICT
        raise ConflictError(
            template.format(step=point.step, metric=point.metric),
            code="step_conflict",
            details={
                "metric": point.metric,
                "step": point.step,
                "stored_loss": existing.loss_value,
                "sent_loss": point.loss_value,
            },
        )
    return existing


def point_add_bare_sql(
    *,
    simulation_id: int,
    loss_value: float,
    step: int | None = None,
    timestamp=None,
    metric: str = DEFAULT_METRIC,
) -> tuple[ConvergencePoint, bool]:
    """Bare SQL by design (the original API's raw insert path): same rules as `point_add`,
    always inside one transaction."""
    return _point_add_in_transaction(
        simulation_id, loss_value, step, timestamp or timezone.now(), metric
    )


def simulated_run_tick(*, simulation_id: int, curve, first_step: int, count: int) -> str:
    """One tick of a server-driven simulated run: store the next points, heartbeat, and say
    the simulation's status (the run stops when it is no longer running)."""
    from simulations.services import simulation_heartbeat

    now = timezone.now()
    steps = range(first_step, first_step + count)
    points_ingest(simulation_id=simulation_id, points=[Point(s, curve.loss(s), now) for s in steps])
    simulation_heartbeat(simulation=Simulation(pk=simulation_id))
    return Simulation.objects.values_list("status", flat=True).get(pk=simulation_id)


def next_free_step(simulation_id: int, metric: str = DEFAULT_METRIC) -> int:
    """The step after the series' last one (0 for a new series), read without a lock."""
    last = (
        ConvergencePoint.objects.filter(simulation_id=simulation_id, series__metric=metric)
        .order_by("-step")
        .values_list("step", flat=True)
        .first()
    )
    return 0 if last is None else last + 1
