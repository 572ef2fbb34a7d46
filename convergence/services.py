"""Writes of convergence points. Every path keeps the step rollup current and broadcasts once,
after commit, with the points it actually stored."""

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from django.db import IntegrityError, connection, transaction
from django.db.models import Max
from django.utils import timezone

from convergence.models import ROLLUP_LEVELS, ConvergencePoint, rollup_width
from simsched.broadcast import broadcast, simulation_group
from simsched.db import is_postgres
from simsched.exceptions import ConflictError, NotFoundError
from simulations import guards  # guards: the plateau/divergence check after each write
from simulations.models import Simulation

MAX_BATCH_POINTS = 10_000

ERR_SIMULATION_NOT_FOUND = "Simulation {simulation_id} does not exist."
ERR_STEP_CONFLICT = "Step {step} is already stored with a different loss value."
ERR_BATCH_CONFLICT = (
    "{count} step(s) are already stored with different loss values; nothing was stored."
)


class Point(NamedTuple):  # a tuple: ten thousand of them per request are built fast
    step: int
    loss_value: float
    timestamp: datetime


@dataclass(frozen=True)
class IngestResult:
    stored: int
    duplicates: int


# Constant SQL built from code constants (never from input): the rollup levels and widths.
_LEVELS_CTE = "levels(level, width) AS (VALUES {})".format(
    ", ".join(f"({level}, {rollup_width(level)})" for level in ROLLUP_LEVELS)
)

_ROLLUP_UPSERT = """
    ON CONFLICT (simulation_id, level, bucket) DO UPDATE SET
        count = convergence_rollup.count + excluded.count,
        first_step = CASE WHEN excluded.first_step < convergence_rollup.first_step
            THEN excluded.first_step ELSE convergence_rollup.first_step END,
        first_loss = CASE WHEN excluded.first_step < convergence_rollup.first_step
            THEN excluded.first_loss ELSE convergence_rollup.first_loss END,
        last_step = CASE WHEN excluded.last_step > convergence_rollup.last_step
            THEN excluded.last_step ELSE convergence_rollup.last_step END,
        last_loss = CASE WHEN excluded.last_step > convergence_rollup.last_step
            THEN excluded.last_loss ELSE convergence_rollup.last_loss END,
        min_step = CASE WHEN excluded.min_loss < convergence_rollup.min_loss
            THEN excluded.min_step ELSE convergence_rollup.min_step END,
        min_loss = CASE WHEN excluded.min_loss < convergence_rollup.min_loss
            THEN excluded.min_loss ELSE convergence_rollup.min_loss END,
        max_step = CASE WHEN excluded.max_loss > convergence_rollup.max_loss
            THEN excluded.max_step ELSE convergence_rollup.max_step END,
        max_loss = CASE WHEN excluded.max_loss > convergence_rollup.max_loss
            THEN excluded.max_loss ELSE convergence_rollup.max_loss END
"""

_ROLLUP_COLUMNS = """
    INSERT INTO convergence_rollup (
        simulation_id, level, bucket, count, first_step, first_loss, last_step, last_loss,
        min_step, min_loss, max_step, max_loss
    )
"""

# PostgreSQL: min/max over [key, value] arrays carry the value of the extreme row. The points
# are grouped once into the finest buckets, and every level is built from those (ties resolve
# to the smallest step either way), which is several times cheaper than grouping the points
# once per level.
_PG_FINEST = f"""
    finest AS (
        SELECT p.step / {rollup_width(ROLLUP_LEVELS[0])} AS bucket, count(*) AS n,
            min(p.step) AS fs, (min(ARRAY[p.step::float8, p.loss_value]))[2] AS fl,
            max(p.step) AS ls, (max(ARRAY[p.step::float8, p.loss_value]))[2] AS ll,
            (min(ARRAY[p.loss_value, p.step::float8]))[2] AS mins, min(p.loss_value) AS minl,
            -(max(ARRAY[p.loss_value, -p.step::float8]))[2] AS maxs, max(p.loss_value) AS maxl
        FROM new AS p
        GROUP BY 1
    )
"""
_PG_ROLLUP_FROM_FINEST = f"""
    {_ROLLUP_COLUMNS}
    SELECT %s, lv.level, b.bucket / (lv.width / {rollup_width(ROLLUP_LEVELS[0])}), sum(b.n),
        min(b.fs), (min(ARRAY[b.fs::float8, b.fl]))[2],
        max(b.ls), (max(ARRAY[b.ls::float8, b.ll]))[2],
        (min(ARRAY[b.minl, b.mins]))[2]::bigint, min(b.minl),
        -(max(ARRAY[b.maxl, -b.maxs]))[2]::bigint, max(b.maxl)
    FROM finest AS b
    CROSS JOIN levels AS lv
    GROUP BY lv.level, b.bucket / (lv.width / {rollup_width(ROLLUP_LEVELS[0])})
    {_ROLLUP_UPSERT}
"""

# PostgreSQL: the insert and the rollup upsert are one statement (one round trip, the points
# are sent once); only rows the insert stored reach the rollup, and the join on simulations
# stores nothing for an unknown simulation instead of failing the transaction.
_PG_INGEST = f"""
    WITH {_LEVELS_CTE},
    new AS (
        INSERT INTO convergence_data (simulation_id, step, timestamp, loss_value)
        SELECT sim.id, p.s, timestamptz 'epoch' + p.us * interval '1 microsecond', p.l
        FROM simulations AS sim,
            unnest(%s::bigint[], %s::bigint[], %s::float8[]) AS p(s, us, l)
        WHERE sim.id = %s
        ON CONFLICT (simulation_id, step) DO NOTHING
        RETURNING id, step, loss_value
    ),
    {_PG_FINEST},
    rolled AS ({_PG_ROLLUP_FROM_FINEST})
    SELECT id, step FROM new
"""


def _pg_array(values, to_text) -> str:
    """A PostgreSQL array literal. Sent as one text parameter: psycopg adapts Python lists
    element by element in Python, which costs more than the database's insert."""
    return "{" + ",".join(map(to_text, values)) + "}"


# SQLite: no arrays, so window functions pick each bucket's extreme rows.
_SQLITE_ROLLUP = f"""
    WITH {_LEVELS_CTE},
    points(s, l) AS (
        SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(%s)
    ),
    ranked AS (
        SELECT lv.level, p.s / lv.width AS bucket,
            count(*) OVER w AS n,
            first_value(p.s) OVER (w ORDER BY p.s) AS fs,
            first_value(p.l) OVER (w ORDER BY p.s) AS fl,
            first_value(p.s) OVER (w ORDER BY p.s DESC) AS ls,
            first_value(p.l) OVER (w ORDER BY p.s DESC) AS ll,
            first_value(p.s) OVER (w ORDER BY p.l, p.s) AS mins,
            first_value(p.l) OVER (w ORDER BY p.l, p.s) AS minl,
            first_value(p.s) OVER (w ORDER BY p.l DESC, p.s) AS maxs,
            first_value(p.l) OVER (w ORDER BY p.l DESC, p.s) AS maxl,
            row_number() OVER (w ORDER BY p.s) AS rn
        FROM points AS p CROSS JOIN levels AS lv
        WINDOW w AS (PARTITION BY lv.level, p.s / lv.width)
    )
    {_ROLLUP_COLUMNS}
    SELECT %s, level, bucket, n, fs, fl, ls, ll, mins, minl, maxs, maxl FROM ranked WHERE rn = 1
    {_ROLLUP_UPSERT}
"""


def _rollup_add(cursor, simulation_id: int, points: list[Point]) -> None:
    """Bare SQL: one set-based upsert per batch keeps every level current; the ORM cannot.
    (SQLite only: on PostgreSQL `_pg_insert_new` updates the rollup in the same statement.)"""
    if not points:
        return
    rows = json.dumps([[p.step, p.loss_value] for p in points])
    cursor.execute(_SQLITE_ROLLUP, [rows, simulation_id])


def _sqlite_datetime(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _epoch_microseconds(value: datetime) -> str:
    """Exact, and a third of the cost of isoformat() for ten thousand timestamps."""
    return str((value - _EPOCH) // _MICROSECOND)


def _pg_insert_new(cursor, simulation_id: int, points: list[Point]) -> list[tuple]:
    """Bare SQL: insert the new points and fold them into the rollup in one statement.
    Returns the stored rows as (id, step): the values stored are the ones sent (timestamps and
    floats round-trip exactly), and loading 10,000 timestamps back would cost more than the
    insert."""
    cursor.execute(
        _PG_INGEST,
        [
            _pg_array((p.step for p in points), str),
            _pg_array((p.timestamp for p in points), _epoch_microseconds),
            _pg_array((p.loss_value for p in points), repr),
            simulation_id,
            simulation_id,
        ],
    )
    return cursor.fetchall()


def _sqlite_insert_new(cursor, simulation_id: int, points: list[Point]) -> set[int]:
    """Bare SQL: one multi-row INSERT ... ON CONFLICT DO NOTHING, then the rollup upsert for
    what it stored; returns the steps it stored."""
    rows = json.dumps([[p.step, _sqlite_datetime(p.timestamp), p.loss_value] for p in points])
    cursor.execute(
        """
        INSERT INTO convergence_data (simulation_id, step, timestamp, loss_value)
        SELECT %s, json_extract(value, '$[0]'), json_extract(value, '$[1]'),
            json_extract(value, '$[2]')
        FROM json_each(%s) WHERE true
        ON CONFLICT (simulation_id, step) DO NOTHING
        RETURNING step
        """,
        [simulation_id, rows],
    )
    stored_steps = {row[0] for row in cursor.fetchall()}
    _rollup_add(cursor, simulation_id, [p for p in points if p.step in stored_steps])
    return stored_steps


def _insert_new(cursor, simulation_id: int, points: list[Point]) -> set[int]:
    """Store the points not stored yet and keep the rollup current; returns the steps stored.
    Raises NotFoundError for an unknown simulation."""
    if is_postgres(connection):
        stored_steps = {row[1] for row in _pg_insert_new(cursor, simulation_id, points)}
        if not stored_steps:
            _require_simulation(simulation_id)
        return stored_steps
    _require_simulation(simulation_id)
    return _sqlite_insert_new(cursor, simulation_id, points)


def _stored_losses(simulation_id: int, steps: list[int]) -> dict[int, float]:
    found = ConvergencePoint.objects.filter(simulation_id=simulation_id, step__in=steps)
    return dict(found.values_list("step", "loss_value"))


def _same_loss(a: float, b: float) -> bool:
    return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def _require_simulation(simulation_id: int) -> None:
    if not Simulation.objects.filter(pk=simulation_id).exists():
        raise NotFoundError(ERR_SIMULATION_NOT_FOUND.format(simulation_id=simulation_id))


def _run_guards(simulation_id: int, stored: list[Point]) -> None:
    """guards: tell simulations.guards what a write stored (no query unless guards apply)."""
    if stored and guards.watches_points(simulation_id):
        guards.guards_on_points(simulation_id, [guards.summarize("loss", stored)])


def _broadcast_points(simulation_id: int, points: list[Point]) -> None:
    if not points:
        return
    ordered = sorted(points, key=lambda p: p.step)
    broadcast(
        simulation_group(simulation_id),
        {
            "type": "convergence.points",
            "simulation_id": simulation_id,
            "points": [{"step": p.step, "loss": p.loss_value} for p in ordered],
        },
    )


def points_ingest(*, simulation_id: int, points: list[Point]) -> IngestResult:
    """Store a batch idempotently by step. A step already stored with the same loss counts as a
    duplicate; one stored with a different loss rejects the whole batch (409), storing nothing."""
    with transaction.atomic(), connection.cursor() as cursor:
        stored_steps = _insert_new(cursor, simulation_id, points)
        repeated = [p for p in points if p.step not in stored_steps]
        if repeated:
            _reject_conflicts(simulation_id, repeated)
        stored = [p for p in points if p.step in stored_steps]
        _run_guards(simulation_id, stored)  # guards
        _broadcast_points(simulation_id, stored)
    return IngestResult(stored=len(stored), duplicates=len(points) - len(stored))


def _reject_conflicts(simulation_id: int, repeated: list[Point]) -> None:
    existing = _stored_losses(simulation_id, [p.step for p in repeated])
    conflicts = [
        {"step": p.step, "stored_loss": existing[p.step], "sent_loss": p.loss_value}
        for p in repeated
        if p.step in existing and not _same_loss(existing[p.step], p.loss_value)
    ]
    if conflicts:
        raise ConflictError(
            ERR_BATCH_CONFLICT.format(count=len(conflicts)),
            code="step_conflict",
            details={"conflicts": conflicts[:100]},
        )


def _next_step(simulation_id: int) -> int:
    """The step after the last stored one; the caller holds the simulation's row lock."""
    last = ConvergencePoint.objects.filter(simulation_id=simulation_id).aggregate(m=Max("step"))[
        "m"
    ]
    return 0 if last is None else last + 1


def _lock_simulation(simulation_id: int) -> None:
    if not Simulation.objects.select_for_update().filter(pk=simulation_id).exists():
        raise NotFoundError(ERR_SIMULATION_NOT_FOUND.format(simulation_id=simulation_id))


def point_add(
    *, simulation_id: int, loss_value: float, step: int | None = None, timestamp=None
) -> tuple[ConvergencePoint, bool]:
    """Store one point. Returns (point, created); re-sending a stored step with the same loss
    returns the stored point, with a different loss it is a 409."""
    if step is not None and is_postgres(connection):
        return _pg_point_add(simulation_id, step, loss_value, timestamp or timezone.now())
    with transaction.atomic():
        if step is None:
            _lock_simulation(simulation_id)  # serializes step assignment per simulation
            step = _next_step(simulation_id)
        else:
            _require_simulation(simulation_id)
        point = ConvergencePoint(
            simulation_id=simulation_id,
            step=step,
            loss_value=loss_value,
            timestamp=timestamp or timezone.now(),
        )
        if is_postgres(connection):
            return _pg_point_add(simulation_id, step, loss_value, point.timestamp)
        try:
            with transaction.atomic():
                point.save(force_insert=True)
        except IntegrityError:
            return _existing_point(simulation_id, step, loss_value), False
        stored = Point(point.step, point.loss_value, point.timestamp)
        with connection.cursor() as cursor:
            _rollup_add(cursor, simulation_id, [stored])
        _run_guards(simulation_id, [stored])  # guards
        _broadcast_points(simulation_id, [stored])
    return point, True


def _pg_point_add(simulation_id, step, loss_value, timestamp) -> tuple[ConvergencePoint, bool]:
    """One statement, so one round trip and no savepoint: the request's hot path."""
    with connection.cursor() as cursor:
        rows = _pg_insert_new(cursor, simulation_id, [Point(step, loss_value, timestamp)])
    if not rows:
        _require_simulation(simulation_id)
        return _existing_point(simulation_id, step, loss_value), False
    point_id = rows[0][0]
    _run_guards(simulation_id, [Point(step, loss_value, timestamp)])  # guards
    _broadcast_points(simulation_id, [Point(step, loss_value, timestamp)])
    point = ConvergencePoint(
        id=point_id,
        simulation_id=simulation_id,
        step=step,
        loss_value=loss_value,
        timestamp=timestamp,
    )
    return point, True


def _existing_point(simulation_id: int, step: int, loss_value: float) -> ConvergencePoint:
    existing = ConvergencePoint.objects.get(simulation_id=simulation_id, step=step)
    if not _same_loss(existing.loss_value, loss_value):
        raise ConflictError(
            ERR_STEP_CONFLICT.format(step=step),
            code="step_conflict",
            details={"step": step, "stored_loss": existing.loss_value, "sent_loss": loss_value},
        )
    return existing


def point_add_bare_sql(
    *, simulation_id: int, loss_value: float, step: int | None = None, timestamp=None
) -> tuple[ConvergencePoint, bool]:
    """Bare SQL by design (the original API's raw insert path): same rules as `point_add`."""
    with transaction.atomic():
        if step is None:
            _lock_simulation(simulation_id)
            step = _next_step(simulation_id)
        try:
            result = points_ingest(
                simulation_id=simulation_id,
                points=[Point(step, loss_value, timestamp or timezone.now())],
            )
        except ConflictError as exc:  # answer as the single-point endpoint does
            raise ConflictError(
                ERR_STEP_CONFLICT.format(step=step),
                code="step_conflict",
                details=exc.details["conflicts"][0],
            ) from exc
    point = ConvergencePoint.objects.get(simulation_id=simulation_id, step=step)
    return point, result.stored == 1


def simulated_run_tick(*, simulation_id: int, curve, first_step: int, count: int) -> str:
    """One tick of a server-driven simulated run: store the next points, heartbeat, and say
    the simulation's status (the run stops when it is no longer running)."""
    from simulations.services import simulation_heartbeat

    now = timezone.now()
    steps = range(first_step, first_step + count)
    points_ingest(simulation_id=simulation_id, points=[Point(s, curve.loss(s), now) for s in steps])
    simulation_heartbeat(simulation=Simulation(pk=simulation_id))
    return Simulation.objects.values_list("status", flat=True).get(pk=simulation_id)


def next_free_step(simulation_id: int) -> int:
    return _next_step(simulation_id)
