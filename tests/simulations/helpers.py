"""Small helpers shared by the simulation tests."""

from datetime import datetime

from simulations.models import Simulation
from tests.helpers import assert_error  # noqa: F401 - re-exported


def set_times(simulation: Simulation, **times: datetime) -> Simulation:
    """Arrange timestamps the clock would otherwise set (created_at, scheduled_at, ...)."""
    Simulation.objects.filter(pk=simulation.pk).update(**times)
    simulation.refresh_from_db()
    return simulation


def names(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["name"] for item in response.json()["results"]]
