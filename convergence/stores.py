"""Bare SQL that stores points, one small store per backend behind one interface.

Every write locks the series it touches (`FOR NO KEY UPDATE` on their rows, in id order) for
the whole write, so concurrent writers of a series queue instead of deadlocking on point and
rollup rows locked in different orders. A series created inside a write is locked out of that
order; the services retry the rare write PostgreSQL ends to break such a deadlock. Each store
inserts the new points and folds them into the rollup in as few statements as the backend
allows: one on PostgreSQL.
"""

import json
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from django.db import connection

from convergence.models import DEFAULT_METRIC, MAX_STEP, ROLLUP_LEVELS, rollup_width


class Point(NamedTuple):  # a tuple: ten thousand of them per request are built fast
    step: int
    loss_value: float  # the value, whatever the metric (the API's field name)
    timestamp: datetime
    metric: str = DEFAULT_METRIC


class Stored(NamedTuple):
    """What one insert did: the series it found (metric -> id; missing ones are not created),
    the (metric, step) -> point id of every point it stored, and the metrics of the found
    series that were compacted (their raw points are gone: nothing is stored into them)."""

    series: dict[str, int]
    points: dict[tuple[str, int], int]
    compacted: frozenset[str] = frozenset()


# Constant SQL built from code constants (never from input): the rollup levels and widths.
_LEVELS_CTE = "levels(level, width) AS (VALUES {})".format(
    ", ".join(f"({level}, {rollup_width(level)})" for level in ROLLUP_LEVELS)
)
_FINEST = rollup_width(ROLLUP_LEVELS[0])

_ROLLUP_UPSERT = """
    ON CONFLICT (simulation_id, series_id, level, bucket) DO UPDATE SET
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
                OR excluded.min_loss = convergence_rollup.min_loss
                    AND excluded.min_step < convergence_rollup.min_step
            THEN excluded.min_step ELSE convergence_rollup.min_step END,
        min_loss = CASE WHEN excluded.min_loss < convergence_rollup.min_loss
            THEN excluded.min_loss ELSE convergence_rollup.min_loss END,
        max_step = CASE WHEN excluded.max_loss > convergence_rollup.max_loss
                OR excluded.max_loss = convergence_rollup.max_loss
                    AND excluded.max_step < convergence_rollup.max_step
            THEN excluded.max_step ELSE convergence_rollup.max_step END,
        max_loss = CASE WHEN excluded.max_loss > convergence_rollup.max_loss
            THEN excluded.max_loss ELSE convergence_rollup.max_loss END,
        first_time = CASE WHEN excluded.first_step < convergence_rollup.first_step
            THEN excluded.first_time ELSE convergence_rollup.first_time END,
        last_time = CASE WHEN excluded.last_step > convergence_rollup.last_step
            THEN excluded.last_time ELSE convergence_rollup.last_time END
"""

_ROLLUP_COLUMNS = """
    INSERT INTO convergence_rollup (
        simulation_id, series_id, level, bucket, count, first_step, first_loss, last_step,
        last_loss, min_step, min_loss, max_step, max_loss, first_time, last_time
    )
"""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _epoch_microseconds(value: datetime) -> str:
    """Exact, and a third of the cost of isoformat() for ten thousand timestamps."""
    return str((value - _EPOCH) // _MICROSECOND)


def _pg_array(values, to_text) -> str:
    """A PostgreSQL array literal. Sent as one text parameter: psycopg adapts Python lists
    element by element in Python, which costs more than the database's insert."""
    return "{" + ",".join(map(to_text, values)) + "}"


def _pg_text_array(values) -> str:
    # Metric names are letters, digits and _ . / - (validated), so quoting is enough.
    return "{" + ",".join(f'"{value}"' for value in values) + "}"


def _metric_order(points: list[Point]) -> list[str]:
    return sorted({p.metric for p in points})


# The parts of a PostgreSQL write after its series CTE `s` and its insert CTE `new`: move each
# series' `next_step` past what was stored (_PG_BUMP), and fold the new points into the rollup.
# Min/max over [key, value] arrays carry the value of the extreme row; the points are grouped
# once into the finest buckets and every level is built from those (ties resolve to the
# smallest step). Times travel as epoch microseconds (bigint), exact, so that [step, time]
# pairs fit one array.
_PG_BUMP = """
        bumped AS (
            UPDATE convergence_series AS c SET next_step = top.step::bigint + 1
            FROM (SELECT series_id, max(step) AS step FROM new GROUP BY 1) AS top
            WHERE c.id = top.series_id AND c.next_step <= top.step
        ),
"""
_PG_ROLLUP = f"""
        finest AS (
            SELECT p.series_id, p.step / {_FINEST} AS bucket, count(*) AS n,
                min(p.step) AS fs, (min(ARRAY[p.step::float8, p.loss_value]))[2] AS fl,
                max(p.step) AS ls, (max(ARRAY[p.step::float8, p.loss_value]))[2] AS ll,
                (min(ARRAY[p.loss_value, p.step::float8]))[2] AS mins, min(p.loss_value) AS minl,
                -(max(ARRAY[p.loss_value, -p.step::float8]))[2] AS maxs, max(p.loss_value) AS maxl,
                (min(ARRAY[p.step, p.us]))[2] AS ft, (max(ARRAY[p.step, p.us]))[2] AS lt
            FROM new AS p
            GROUP BY 1, 2
        ),
        rolled AS (
            {_ROLLUP_COLUMNS}
            SELECT %(simulation)s, b.series_id, lv.level, b.bucket / (lv.width / {_FINEST}),
                sum(b.n),
                min(b.fs), (min(ARRAY[b.fs::float8, b.fl]))[2],
                max(b.ls), (max(ARRAY[b.ls::float8, b.ll]))[2],
                (min(ARRAY[b.minl, b.mins]))[2]::bigint, min(b.minl),
                -(max(ARRAY[b.maxl, -b.maxs]))[2]::bigint, max(b.maxl),
                timestamptz 'epoch' + (min(ARRAY[b.fs, b.ft]))[2] * interval '1 microsecond',
                timestamptz 'epoch' + (max(ARRAY[b.ls, b.lt]))[2] * interval '1 microsecond'
            FROM finest AS b
            CROSS JOIN levels AS lv
            GROUP BY b.series_id, lv.level, b.bucket / (lv.width / {_FINEST})
            {_ROLLUP_UPSERT}
        )
"""

_PG_RETURNING = """
    RETURNING series_id, id, step, loss_value,
        (extract(epoch FROM timestamp) * 1000000)::bigint AS us
"""

# A single point needs no grouping: it is the first, last, min and max of its bucket at every
# level, so it is upserted as it is (a quarter off the statement of one point, measured).
_PG_ROLLUP_ONE = f"""
        rolled AS (
            {_ROLLUP_COLUMNS}
            SELECT %(simulation)s, p.series_id, lv.level, p.step / lv.width, 1,
                p.step, p.loss_value, p.step, p.loss_value,
                p.step, p.loss_value, p.step, p.loss_value, p.timestamp, p.timestamp
            FROM new AS p CROSS JOIN levels AS lv
            {_ROLLUP_UPSERT}
        )
"""
# After a CTE `s` of one row (id, step): store the point there, roll it up, answer
# (series id, step, point id or NULL if the step was already stored).
_PG_STORE_ONE = f"""
        new AS (
            INSERT INTO convergence_data (simulation_id, series_id, step, timestamp, loss_value)
            SELECT %(simulation)s, s.id, s.step, %(time)s, %(value)s FROM s
            ON CONFLICT (simulation_id, series_id, step) DO NOTHING
            RETURNING series_id, id, step, loss_value, timestamp
        ),
        {_PG_ROLLUP_ONE}
        SELECT s.id, s.step, new.id FROM s LEFT JOIN new ON true
"""


# The writer's `ReportScope` (simulations/permissions.py), checked in the write's statement: a
# point write needs no separate read of the simulation.
_PG_ALLOWED = """EXISTS (
                SELECT FROM simulations AS sim WHERE sim.id = %(simulation)s
                    AND (%(any)s OR sim.machine_id = %(machine)s OR sim.owner_id = %(owner)s)
            )"""
_ANYONE = (True, None, None)


def _scope_params(scope) -> dict:
    any_, machine, owner = scope or _ANYONE
    return {"any": any_, "machine": machine, "owner": owner}


class PostgresStore:
    # Lock the write's series in id order, insert the new points, move the series' next_step,
    # fold them into the rollup: one statement, so one round trip and the points sent once.
    INSERT = f"""
        WITH {_LEVELS_CTE},
        s AS MATERIALIZED (
            SELECT id, metric, compacted_at IS NOT NULL AS compacted FROM convergence_series
            WHERE simulation_id = %(simulation)s AND metric = ANY(%(metrics)s::text[])
                AND {_PG_ALLOWED}
            ORDER BY id FOR NO KEY UPDATE
        ),
        new AS (
            INSERT INTO convergence_data (simulation_id, series_id, step, timestamp, loss_value)
            SELECT %(simulation)s, s.id, p.s,
                timestamptz 'epoch' + p.us * interval '1 microsecond', p.l
            FROM unnest(%(keys)s::int[], %(steps)s::bigint[], %(times)s::bigint[],
                %(values)s::float8[]) AS p(k, s, us, l)
            JOIN s ON s.metric = (%(metrics)s::text[])[p.k] AND NOT s.compacted
            ON CONFLICT (simulation_id, series_id, step) DO NOTHING
            {_PG_RETURNING}
        ),
        {_PG_BUMP}
        {_PG_ROLLUP}
        SELECT s.metric, s.id, s.compacted, new.id, new.step
        FROM s LEFT JOIN new ON new.series_id = s.id
    """

    # One point at a given step, the agent's hot path: the UPDATE that moves the series'
    # next_step past it is also the series lock (GREATEST: a repeated or earlier step leaves
    # it as it is).
    INSERT_ONE = f"""
        WITH {_LEVELS_CTE},
        s AS MATERIALIZED (
            UPDATE convergence_series
            SET next_step = GREATEST(next_step, %(step)s::bigint + 1)
            WHERE simulation_id = %(simulation)s AND metric = %(metric)s
                AND compacted_at IS NULL AND {_PG_ALLOWED}
            RETURNING id, %(step)s::bigint AS step
        ),
        {_PG_STORE_ONE}
    """

    # A point without a step takes its series' next_step: the UPDATE locks the series row and,
    # under READ COMMITTED, reads the value the previous writer committed, so concurrent writers
    # get consecutive steps. A max(step) read in the same statement would not: its snapshot is
    # taken before the lock is granted. No row: the series is missing or out of steps.
    INSERT_NEXT = f"""
        WITH {_LEVELS_CTE},
        s AS MATERIALIZED (
            UPDATE convergence_series SET next_step = next_step + 1
            WHERE simulation_id = %(simulation)s AND metric = %(metric)s
                AND next_step <= %(max_step)s AND compacted_at IS NULL AND {_PG_ALLOWED}
            RETURNING id, next_step - 1 AS step
        ),
        {_PG_STORE_ONE}
    """

    def insert(self, cursor, simulation_id: int, points: list[Point], scope=None) -> Stored:
        """Bare SQL: lock, insert and roll up in one statement (see INSERT). With a `scope`,
        a simulation outside it finds no series (and stores nothing)."""
        metrics = _metric_order(points)
        index = {metric: k for k, metric in enumerate(metrics, start=1)}
        metric_array = _pg_text_array(metrics)
        cursor.execute(
            self.INSERT,
            {
                "simulation": simulation_id,
                "metrics": metric_array,
                "keys": _pg_array((index[p.metric] for p in points), str),
                "steps": _pg_array((p.step for p in points), str),
                "times": _pg_array((p.timestamp for p in points), _epoch_microseconds),
                "values": _pg_array((p.loss_value for p in points), repr),
                **_scope_params(scope),
            },
        )
        series, stored, compacted = {}, {}, set()
        for metric, series_id, is_compacted, point_id, step in cursor.fetchall():
            series[metric] = series_id
            if is_compacted:
                compacted.add(metric)
            if point_id is not None:
                stored[(metric, step)] = point_id
        return Stored(series, stored, frozenset(compacted))

    def insert_one(
        self, cursor, simulation_id: int, point: Point, scope
    ) -> tuple[int, int, int | None] | None:
        """Bare SQL: store one point at its step in one statement (see INSERT_ONE). (series id,
        step, point id or None if the step is already stored), or None when the series is
        missing or the simulation is outside `scope`."""
        cursor.execute(
            self.INSERT_ONE,
            {
                "simulation": simulation_id,
                "metric": point.metric,
                "step": point.step,
                "time": point.timestamp,
                "value": point.loss_value,
                **_scope_params(scope),
            },
        )
        return cursor.fetchone()

    def insert_next(
        self, cursor, simulation_id: int, metric: str, value: float, timestamp: datetime, scope
    ) -> tuple[int, int, int | None] | None:
        """Bare SQL: store a point at its series' next step in one statement (see INSERT_NEXT).
        (series id, step, point id or None if the step was taken), or None when the series is
        missing, has no step left, or the simulation is outside `scope`."""
        cursor.execute(
            self.INSERT_NEXT,
            {
                "simulation": simulation_id,
                "metric": metric,
                "max_step": MAX_STEP,
                "time": timestamp,
                "value": value,
                **_scope_params(scope),
            },
        )
        return cursor.fetchone()

    def create_series(self, cursor, simulation_id: int, metrics: list[str]) -> None:
        """Bare SQL: create the missing series, in name order (concurrent creators of the same
        names wait for each other instead of deadlocking); nothing for an unknown simulation."""
        cursor.execute(
            """
            INSERT INTO convergence_series (simulation_id, metric)
            SELECT sim.id, m.metric FROM simulations AS sim, unnest(%s::text[]) AS m(metric)
            WHERE sim.id = %s ORDER BY m.metric
            ON CONFLICT (simulation_id, metric) DO NOTHING
            """,
            [_pg_text_array(sorted(metrics)), simulation_id],
        )

    def lock_series(self, cursor, simulation_id: int, metric: str) -> int | None:
        """Bare SQL (one statement on the no-step path): lock a series, return its id."""
        cursor.execute(
            """
            SELECT id FROM convergence_series WHERE simulation_id = %s AND metric = %s
            FOR NO KEY UPDATE
            """,
            [simulation_id, metric],
        )
        row = cursor.fetchone()
        return row[0] if row else None


class SqliteStore:
    """SQLite writes one transaction at a time (the database lock), so it needs no row locks;
    it has no arrays, so points travel as one JSON parameter and window functions pick each
    bucket's extreme rows."""

    def insert(self, cursor, simulation_id: int, points: list[Point]) -> Stored:
        """Bare SQL: one multi-row INSERT ... ON CONFLICT DO NOTHING, then one set-based
        rollup upsert for what it stored; the ORM can do neither."""
        metrics = _metric_order(points)
        cursor.execute(
            """
            SELECT metric, id, compacted_at IS NOT NULL FROM convergence_series
            WHERE simulation_id = %s AND metric IN (SELECT value FROM json_each(%s))
            """,
            [simulation_id, json.dumps(metrics)],
        )
        found = cursor.fetchall()
        series = {metric: series_id for metric, series_id, _ in found}
        compacted = frozenset(metric for metric, _, is_compacted in found if is_compacted)
        rows = [
            [series[p.metric], p.step, _sqlite_datetime(p.timestamp), p.loss_value, p.metric]
            for p in points
            if p.metric in series and p.metric not in compacted
        ]
        if not rows:
            return Stored(series, {}, compacted)
        cursor.execute(
            """
            INSERT INTO convergence_data (simulation_id, series_id, step, timestamp, loss_value)
            SELECT %s, json_extract(value, '$[0]'), json_extract(value, '$[1]'),
                json_extract(value, '$[2]'), json_extract(value, '$[3]')
            FROM json_each(%s) WHERE true
            ON CONFLICT (simulation_id, series_id, step) DO NOTHING
            RETURNING series_id, id, step
            """,
            [simulation_id, json.dumps(rows)],
        )
        names = {series_id: metric for metric, series_id in series.items()}
        stored = {(names[sid], step): point_id for sid, point_id, step in cursor.fetchall()}
        new = [[row[0], row[1], row[3], row[2]] for row in rows if (row[4], row[1]) in stored]
        if new:
            cursor.execute(self.ROLLUP, [json.dumps(new), simulation_id])
            tops: dict[int, int] = {}
            for series_id, step, *_ in new:
                tops[series_id] = max(step, tops.get(series_id, step))
            cursor.executemany(
                "UPDATE convergence_series SET next_step = max(next_step, %s) WHERE id = %s",
                [(step + 1, series_id) for series_id, step in tops.items()],
            )
        return Stored(series, stored, compacted)

    ROLLUP = f"""
        WITH {_LEVELS_CTE},
        points(k, s, l, t) AS (
            SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
                json_extract(value, '$[2]'), json_extract(value, '$[3]')
            FROM json_each(%s)
        ),
        ranked AS (
            SELECT p.k, lv.level, p.s / lv.width AS bucket,
                count(*) OVER w AS n,
                first_value(p.s) OVER (w ORDER BY p.s) AS fs,
                first_value(p.l) OVER (w ORDER BY p.s) AS fl,
                first_value(p.s) OVER (w ORDER BY p.s DESC) AS ls,
                first_value(p.l) OVER (w ORDER BY p.s DESC) AS ll,
                first_value(p.s) OVER (w ORDER BY p.l, p.s) AS mins,
                first_value(p.l) OVER (w ORDER BY p.l, p.s) AS minl,
                first_value(p.s) OVER (w ORDER BY p.l DESC, p.s) AS maxs,
                first_value(p.l) OVER (w ORDER BY p.l DESC, p.s) AS maxl,
                first_value(p.t) OVER (w ORDER BY p.s) AS ft,
                first_value(p.t) OVER (w ORDER BY p.s DESC) AS lt,
                row_number() OVER (w ORDER BY p.s) AS rn
            FROM points AS p CROSS JOIN levels AS lv
            WINDOW w AS (PARTITION BY p.k, lv.level, p.s / lv.width)
        )
        {_ROLLUP_COLUMNS}
        SELECT %s, k, level, bucket, n, fs, fl, ls, ll, mins, minl, maxs, maxl, ft, lt
        FROM ranked WHERE rn = 1
        {_ROLLUP_UPSERT}
    """

    def create_series(self, cursor, simulation_id: int, metrics: list[str]) -> None:
        """Bare SQL: create the missing series in one statement; nothing for an unknown
        simulation."""
        cursor.execute(
            """
            INSERT INTO convergence_series (simulation_id, metric)
            SELECT sim.id, m.value FROM simulations AS sim, json_each(%s) AS m
            WHERE sim.id = %s
            ON CONFLICT (simulation_id, metric) DO NOTHING
            """,
            [json.dumps(sorted(metrics)), simulation_id],
        )

    def lock_series(self, cursor, simulation_id: int, metric: str) -> int | None:
        """Bare SQL, like the PostgreSQL store's; the transaction's database lock is the lock."""
        cursor.execute(
            "SELECT id FROM convergence_series WHERE simulation_id = %s AND metric = %s",
            [simulation_id, metric],
        )
        row = cursor.fetchone()
        return row[0] if row else None


def free_step(cursor, simulation_id: int, series_id: int) -> int:
    """Bare SQL: the step a point sent without one takes, under the series' lock: its
    `next_step`, or past the largest stored step if points were written around the counter
    (a bulk load straight into the table)."""
    cursor.execute(
        """
        SELECT CASE WHEN m.top >= s.next_step THEN CAST(m.top AS bigint) + 1 ELSE s.next_step END
        FROM convergence_series AS s,
            (SELECT max(step) AS top FROM convergence_data
             WHERE simulation_id = %s AND series_id = %s) AS m
        WHERE s.id = %s
        """,
        [simulation_id, series_id, series_id],
    )
    return cursor.fetchone()[0]


def _sqlite_datetime(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ")


_STORES = {"postgresql": PostgresStore(), "sqlite": SqliteStore()}


def store():
    """The store for the default database's backend."""
    return _STORES[connection.vendor]
