"""Small helpers shared by the simulation tests."""

from datetime import datetime

from simulations.models import Simulation


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The response is the one error shape with `status` (and `code`); returns the error."""
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def set_times(simulation: Simulation, **times: datetime) -> Simulation:
    """Arrange timestamps the clock would otherwise set (created_at, scheduled_at, ...)."""
    Simulation.objects.filter(pk=simulation.pk).update(**times)
    simulation.refresh_from_db()
    return simulation


def names(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["name"] for item in response.json()["results"]]
