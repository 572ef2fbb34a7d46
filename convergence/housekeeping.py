"""Compaction: drop the raw points of runs that ended long ago, keep their rollups."""

import datetime
import re
from dataclasses import dataclass

from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from convergence.models import ConvergenceSeries
from simulations.models import Simulation

COMPACT_BATCH = 10_000
_AGE = re.compile(r"^(\d+)([dh])\Z")


class CutoffError(ValueError):
    pass


def parse_cutoff(text: str, now: datetime.datetime | None = None) -> datetime.datetime:
    """`90d`, `12h` (before now) or an ISO date / datetime."""
    now = now or timezone.now()
    match = _AGE.match(text.strip())
    if match:
        amount, unit = int(match[1]), match[2]
        return now - datetime.timedelta(
            days=amount if unit == "d" else 0, hours=amount if unit == "h" else 0
        )
    try:
        moment = parse_datetime(text.strip())
        day = parse_date(text.strip()) if moment is None else None
    except ValueError:  # well formed but impossible, such as month 13
        moment = day = None
    if moment is None:
        if day is None:
            raise CutoffError(f"Cannot read {text!r}: use Nd, Nh or an ISO date.")
        moment = datetime.datetime.combine(day, datetime.time.min)
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, datetime.UTC)
    return moment


@dataclass
class CompactResult:
    simulations: int = 0
    series: int = 0
    points_deleted: int = 0


def compact_points(*, older_than: datetime.datetime, dry_run: bool = False) -> CompactResult:
    """Delete the raw points of every series of simulations in a final state that finished
    before `older_than`, in batches of COMPACT_BATCH rows (short transactions, small locks),
    and mark each series compacted. Rollups stay. Idempotent: a compacted series is skipped."""
    series = ConvergenceSeries.objects.filter(
        compacted_at__isnull=True,
        simulation__status__in=Simulation.FINAL,
        simulation__finished_at__lt=older_than,
    ).values_list("id", "simulation_id")
    result = CompactResult()
    seen = set()
    for series_id, simulation_id in list(series):
        seen.add(simulation_id)
        result.series += 1
        if dry_run:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM convergence_data"
                    " WHERE simulation_id = %s AND series_id = %s",
                    [simulation_id, series_id],
                )
                result.points_deleted += cursor.fetchone()[0]
            continue
        while True:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(
                    """
                    DELETE FROM convergence_data WHERE simulation_id = %s AND id IN (
                        SELECT id FROM convergence_data
                        WHERE simulation_id = %s AND series_id = %s LIMIT %s)
                    """,
                    [simulation_id, simulation_id, series_id, COMPACT_BATCH],
                )
                deleted = cursor.rowcount
            result.points_deleted += deleted
            if deleted < COMPACT_BATCH:
                break
        ConvergenceSeries.objects.filter(pk=series_id).update(compacted_at=timezone.now())
    result.simulations = len(seen)
    return result
