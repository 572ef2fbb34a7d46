"""The paged points read (`/convergence/{id}/data`) takes the parameters its schema states."""

import pytest

from tests.convergence.conftest import store_points
from tests.helpers import assert_error


@pytest.mark.parametrize("limit", ["abc", "0", "-1", "10001", "1.5"])
def test_a_limit_outside_1_to_10000_is_a_400_not_the_default_page(api, simulation, limit):
    response = api.get(f"/convergence/{simulation.pk}/data/", {"limit": limit})
    assert "limit" in assert_error(response, 400, "invalid")["fields"]


def test_a_limit_in_range_sizes_the_page(api, simulation):
    store_points(simulation.pk, {step: 1.0 for step in range(5)})
    body = api.get(f"/convergence/{simulation.pk}/data/", {"limit": 2}).json()
    assert [p["step"] for p in body["results"]] == [0, 1]
    assert body["next"] is not None


def test_an_empty_cursor_is_the_first_page(api, simulation):
    store_points(simulation.pk, {0: 1.0, 1: 0.5})
    response = api.get(f"/convergence/{simulation.pk}/data/?cursor=&limit=")
    assert response.status_code == 200, response.content
    assert [p["step"] for p in response.json()["results"]] == [0, 1]


def test_a_date_time_beyond_utc_years_is_out_of_range_not_malformed(api, simulation):
    body = {"simulation_id": simulation.pk, "loss_value": 1.0}
    body["timestamp"] = "9999-12-31T23:59:59-02:00"
    error = assert_error(api.post("/convergence/data/", body, format="json"), 400, "invalid")
    assert error["fields"]["timestamp"] == ["Must be between 2000-01-01 and one day from now."]
