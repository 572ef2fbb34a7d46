"""Fixtures for the convergence tests: a simulation owned by the `api` user, and a way to fill
it with points through the ingestion service (as agents' batches do)."""

from datetime import UTC, datetime, timedelta

import pytest

from convergence.services import MAX_BATCH_POINTS, Point, points_ingest
from tests.factories import make_simulation
from tests.helpers import error_of  # noqa: F401 - re-exported

BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def store_points(simulation_id: int, losses_by_step: dict[int, float]) -> None:
    """Store `losses_by_step` through `points_ingest`, in batches of at most 10,000."""
    points = [
        Point(step, loss, BASE_TIME + timedelta(seconds=step))
        for step, loss in losses_by_step.items()
    ]
    for start in range(0, len(points), MAX_BATCH_POINTS):
        points_ingest(simulation_id=simulation_id, points=points[start : start + MAX_BATCH_POINTS])


@pytest.fixture
def simulation(user):
    return make_simulation(name="convergence-run", owner=user)
