"""Reads of convergence data: charts, incremental streams, per-simulation stats and the CSV
export. Callers import from here; the modules split them by kind."""

from convergence.selectors._common import (
    GRAPH_DEFAULT_POINTS,
    GRAPH_MAX_POINTS,
    GRAPH_MIN_POINTS,
    STREAM_MAX_POINTS,
    simulation_status,
)
from convergence.selectors.charts import (
    convergence_compare,
    convergence_graph,
    convergence_snapshot,
)
from convergence.selectors.export import points_csv, require_raw_points
from convergence.selectors.series import (
    points_from,
    points_since,
    series_positions,
    simulation_metrics,
    simulation_point_stats,
)

__all__ = [
    "GRAPH_DEFAULT_POINTS",
    "GRAPH_MAX_POINTS",
    "GRAPH_MIN_POINTS",
    "STREAM_MAX_POINTS",
    "convergence_compare",
    "convergence_graph",
    "convergence_snapshot",
    "points_csv",
    "points_from",
    "points_since",
    "series_positions",
    "require_raw_points",
    "simulation_metrics",
    "simulation_point_stats",
    "simulation_status",
]
