"""Metrics read from the database when Prometheus scrapes: the queue and the fleet are shared
state, so any process can report them, and no process has to keep them current."""

import logging
from datetime import timedelta

from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from machines.models import Machine
from machines.selectors import fleet_utilisation
from simulations.models import Simulation
from simulations.selectors import pending_wait_reason_codes

logger = logging.getLogger(__name__)

# Seconds from a simulation's creation to its (latest) placement on a machine.
WAIT_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600)


def _simulations_by_status():
    family = GaugeMetricFamily("simsched_simulations", "Simulations by status.", labels=["status"])
    counts = dict(Simulation.objects.values_list("status").annotate(n=Count("id")))
    for status in Simulation.Status.values:
        family.add_metric([status], counts.get(status, 0))
    return family


def _waiting_by_reason():
    family = GaugeMetricFamily(
        "simsched_simulations_waiting",
        "Pending simulations by why they wait (the wait_reason code).",
        labels=["reason"],
    )
    for reason, count in sorted(pending_wait_reason_codes().items()):
        family.add_metric([reason], count)
    return family


def _wait_time_histogram():
    """Cumulative over the simulations that are or were placed, as a Prometheus histogram, so
    `histogram_quantile(0.95, rate(simsched_simulation_wait_seconds_bucket[1h]))` gives the
    p95 wait of the simulations placed in the last hour."""
    wait = ExpressionWrapper(F("scheduled_at") - F("created_at"), output_field=DurationField())
    aggregates = {
        f"le_{bound}": Count("id", filter=Q(wait__lte=timedelta(seconds=bound)))
        for bound in WAIT_BUCKETS
    }
    placed = Simulation.objects.filter(scheduled_at__isnull=False).annotate(wait=wait)
    totals = placed.aggregate(count=Count("id"), total=Sum("wait"), **aggregates)
    buckets = [(str(float(bound)), totals[f"le_{bound}"]) for bound in WAIT_BUCKETS]
    buckets.append(("+Inf", totals["count"]))
    family = HistogramMetricFamily(
        "simsched_simulation_wait_seconds",
        "Time from a simulation's creation to its placement on a machine.",
    )
    total = totals["total"]
    family.add_metric([], buckets, sum_value=max(total.total_seconds(), 0.0) if total else 0.0)
    return family


def _fleet():
    fleet = fleet_utilisation()
    machines = GaugeMetricFamily("simsched_machines", "Machines by status.", labels=["status"])
    for status in Machine.Status.values:
        machines.add_metric([status], fleet.get(status, 0))
    yield machines
    yield GaugeMetricFamily(
        "simsched_machine_utilisation_ratio",
        "Busy machines over machines in service (not in maintenance).",
        value=fleet["utilisation"],
    )
    yield GaugeMetricFamily(
        "simsched_gpu_utilisation_ratio",
        "GPUs on busy machines over all GPUs.",
        value=fleet["gpu_utilisation"],
    )
    cost = GaugeMetricFamily(
        "simsched_machines_hourly_cost",
        "What the machines cost per hour, by state: busy (running work) and idle (available).",
        labels=["state"],
    )
    cost.add_metric(["busy"], float(fleet["busy_hourly_cost"]))
    cost.add_metric(["idle"], float(fleet["idle_hourly_cost"]))
    yield cost


def _guard_stops():
    """Simulations stopped by each guard (Simulation.stopped_by), once the guards exist."""
    field_names = {field.name for field in Simulation._meta.get_fields()}
    if "stopped_by" not in field_names:
        return
    family = GaugeMetricFamily(
        "simsched_simulations_stopped_by_guard",
        "Simulations a guard stopped, by the guard's kind.",
        labels=["kind"],
    )
    rows = (
        Simulation.objects.exclude(stopped_by="")
        .exclude(stopped_by__isnull=True)
        .values_list("stopped_by")
        .annotate(n=Count("id"))
    )
    counts = dict.fromkeys((k for k in Simulation.StoppedBy.values if k), 0) | dict(rows)
    for kind, count in sorted(counts.items()):  # every kind, 0 included, so the series exists
        family.add_metric([kind], count)
    yield family


class DatabaseCollector:
    """Reads the queue and the fleet at scrape time (a handful of aggregate queries)."""

    def collect(self):
        yield _simulations_by_status()
        yield _waiting_by_reason()
        yield _wait_time_histogram()
        yield from _fleet()
        yield from _guard_stops()

    def describe(self):
        return []  # collected only when scraped, never at registration
