"""The metrics server processes keep themselves. Names follow Prometheus conventions: the
`simsched_` prefix, base units (seconds), `_total` on counters, and labels with a bounded set of
values only (an endpoint's route name, never a simulation or user id).

With PROMETHEUS_MULTIPROC_DIR set (bin/serve-http sets it), prometheus_client keeps the values
in files there, so a scrape of any worker reports the sum over all of them.
"""

import os
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

POINTS_INGESTED = Counter(
    "simsched_points_ingested",
    "Convergence points stored, by the endpoint that stored them.",
    ["endpoint"],
    registry=None,
)
WRITE_DURATION = Histogram(
    "simsched_write_request_duration_seconds",
    "Time to answer a write request (POST, PUT, PATCH, DELETE), by endpoint (route name).",
    ["endpoint"],
    buckets=WRITE_BUCKETS,
    registry=None,
)
WEBSOCKETS = Gauge(
    "simsched_websocket_connections",
    "WebSocket connections open now.",
    multiprocess_mode="livesum",
    registry=None,
)
BROADCAST_FAILURES = Counter(
    "simsched_broadcast_failures",
    "Live-update broadcasts the channel layer failed to take (the data was stored).",
    registry=None,
)
BROADCASTS_DROPPED = Counter(
    "simsched_broadcasts_dropped",
    "Live-update broadcasts dropped because the backlog for a slow channel layer was full.",
    registry=None,
)
DB_POOL_CONNECTIONS = Gauge(
    "simsched_db_pool_connections",
    "PostgreSQL connections held by the server processes' pools, by state (in_use, idle).",
    ["state"],
    multiprocess_mode="livesum",
    registry=None,
)
DB_POOL_WAITING = Gauge(
    "simsched_db_pool_requests_waiting",
    "Requests waiting for a pooled PostgreSQL connection.",
    multiprocess_mode="livesum",
    registry=None,
)
DB_POOL_MAX = Gauge(
    "simsched_db_pool_max_connections",
    "The most connections the pools may open (DB_POOL_MAX_SIZE per server process).",
    multiprocess_mode="livesum",
    registry=None,
)

PROCESS_METRICS = (
    POINTS_INGESTED,
    WRITE_DURATION,
    WEBSOCKETS,
    BROADCAST_FAILURES,
    BROADCASTS_DROPPED,
    DB_POOL_CONNECTIONS,
    DB_POOL_WAITING,
    DB_POOL_MAX,
)


def scrape_registry(collectors=()) -> CollectorRegistry:
    """The registry one scrape reads: every worker's values (multiprocess mode) or this
    process's, plus `collectors` (those that read the database)."""
    registry = CollectorRegistry()
    if MULTIPROCESS:
        multiprocess.MultiProcessCollector(registry)
    else:
        for metric in PROCESS_METRICS:
            registry.register(metric)
    for collector in collectors:
        registry.register(collector)
    return registry


POOL_SAMPLE_SECONDS = 1.0
_pool_sampled_at = 0.0


def record_write(endpoint: str, seconds: float, points: int) -> None:
    """A write request answered: its duration, the points it stored, and (at most once a
    second) this process's pool use. For Django's requests (middleware.py) and the ingest
    shortcut's (convergence/asgi.py)."""
    global _pool_sampled_at
    WRITE_DURATION.labels(endpoint).observe(seconds)
    if points:
        POINTS_INGESTED.labels(endpoint).inc(points)
    now = time.monotonic()
    if now - _pool_sampled_at >= POOL_SAMPLE_SECONDS:
        _pool_sampled_at = now
        record_pool_use()


def record_pool_use() -> None:
    """This process's database pool, into the pool gauges (PostgreSQL with DB_POOL only)."""
    from django.db import connection

    pool = getattr(connection, "pool", None) if connection.vendor == "postgresql" else None
    if pool is None:
        return
    stats = pool.get_stats()
    size, available = stats.get("pool_size", 0), stats.get("pool_available", 0)
    DB_POOL_CONNECTIONS.labels("in_use").set(size - available)
    DB_POOL_CONNECTIONS.labels("idle").set(available)
    DB_POOL_WAITING.set(stats.get("requests_waiting", 0))
    DB_POOL_MAX.set(stats.get("pool_max", pool.max_size))
