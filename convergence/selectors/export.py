"""The CSV export, streamed: read in keyset chunks, sent a few hundred KiB at a time."""

import csv
import heapq
import io
from collections.abc import Iterator

from django.db import connection

from convergence.models import ConvergenceSeries
from convergence.selectors._common import simulation_status
from simsched.db import as_datetime
from simsched.exceptions import GoneError

CSV_CHUNK_ROWS = 5000


def _series_rows(simulation_id: int, series_id: int, chunk: int) -> Iterator[tuple]:
    """Bare SQL: one series in step order, read in keyset chunks along the unique index (a
    server-side cursor would hold a transaction open for the whole download)."""
    after = -1
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                """
                SELECT step, timestamp, loss_value FROM convergence_data
                WHERE simulation_id = %s AND series_id = %s AND step > %s
                ORDER BY step LIMIT %s
                """,
                [simulation_id, series_id, after, chunk],
            )
            rows = cursor.fetchall()
        yield from rows
        if len(rows) < chunk:
            return
        after = rows[-1][0]


def _csv_timestamp(value) -> str:
    return as_datetime(value).isoformat()


ERR_COMPACTED = (
    "The raw points of simulation {simulation_id} were dropped by compaction on {when}; "
    "its charts (graph, compare) and /metrics still answer from the rollups."
)


def require_raw_points(*, simulation_id: int, metric: str | None = None) -> None:
    """Raise GoneError (410) when the series asked for (None: any series of the run) was
    compacted: its raw points are gone, and an empty or partial export would look like data."""
    series = ConvergenceSeries.objects.filter(
        simulation_id=simulation_id, compacted_at__isnull=False
    )
    if metric is not None:
        series = series.filter(metric=metric)
    when = series.order_by("compacted_at").values_list("compacted_at", flat=True).first()
    if when is not None:
        raise GoneError(
            ERR_COMPACTED.format(simulation_id=simulation_id, when=when.isoformat()),
            details={"compacted_at": when.isoformat()},
        )


def points_csv(*, simulation_id: int, metric: str | None = None) -> Iterator[bytes]:
    """The points as CSV, in chunks of bytes, reading a few thousand rows at a time.

    One metric: `step,timestamp,loss_value` rows of that series. None: the whole run in long
    form, `step,metric,value,timestamp`, ordered by step then metric (each series is read in
    step order and the series are merged)."""
    simulation_status(simulation_id)
    series = ConvergenceSeries.objects.filter(simulation_id=simulation_id).order_by("metric")
    if metric is not None:
        series = series.filter(metric=metric)
    require_raw_points(simulation_id=simulation_id, metric=metric)
    names = list(series.values_list("id", "metric"))
    return _csv_chunks(simulation_id, names, long_form=metric is None)


def _csv_chunks(simulation_id: int, names: list[tuple[int, str]], *, long_form: bool):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if not long_form:
        writer.writerow(["step", "timestamp", "loss_value"])
        rows = (
            (step, _csv_timestamp(stamp), repr(value))
            for series_id, _ in names
            for step, stamp, value in _series_rows(simulation_id, series_id, CSV_CHUNK_ROWS)
        )
    else:
        writer.writerow(["step", "metric", "value", "timestamp"])
        chunk = CSV_CHUNK_ROWS // max(len(names), 1) + 1
        per_series = [_named_rows(simulation_id, sid, metric, chunk) for sid, metric in names]
        rows = (
            (step, metric, repr(value), _csv_timestamp(stamp))
            for step, metric, value, stamp in heapq.merge(*per_series, key=_step_then_metric)
        )
    for row in rows:
        writer.writerow(row)
        if buffer.tell() >= 256 * 1024:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def _named_rows(simulation_id: int, series_id: int, metric: str, chunk: int):
    for step, stamp, value in _series_rows(simulation_id, series_id, chunk):
        yield step, metric, value, stamp


def _step_then_metric(row: tuple) -> tuple:
    return row[0], row[1]
