"""Simulation list filters: ids that match nothing give an empty page, dates without a UTC
equivalent a 400 (they were a 500), and the schema's types are the ones enforced."""

import pytest

from tests.factories import make_machine, make_simulation
from tests.helpers import assert_error


@pytest.mark.parametrize("field", ["machine", "pinned_machine", "owner"])
def test_an_id_filter_that_matches_nothing_is_an_empty_page(api, field):
    make_simulation()
    response = api.get("/simulations/", {field: 987654})
    assert response.status_code == 200
    assert response.json()["results"] == []


@pytest.mark.parametrize("field", ["machine", "pinned_machine", "owner"])
@pytest.mark.parametrize("value", ["0", "1.5", "x", str(2**63)])
def test_an_id_filter_refuses_what_is_no_id(api, field, value):
    assert field in assert_error(api.get("/simulations/", {field: value}), 400)["fields"]


def test_the_pinned_machine_filter_finds_the_simulations_pinned_to_it(api, user):
    machine = make_machine()
    pinned = make_simulation(owner=user, pinned_machine=machine)
    make_simulation(owner=user)
    response = api.get("/simulations/", {"pinned_machine": machine.pk})
    assert [s["id"] for s in response.json()["results"]] == [pinned.pk]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("created_after", "0001-01-01T00:00:00+01:00"),
        ("created_before", "9999-12-31T23:59:59-01:00"),
    ],
)
def test_a_date_time_with_no_utc_equivalent_is_a_400_not_a_500(api, field, value):
    assert field in assert_error(api.get("/simulations/", {field: value}), 400)["fields"]


def test_an_empty_status_choice_is_refused(api):
    assert "status" in assert_error(api.get("/simulations/?status="), 400)["fields"]
