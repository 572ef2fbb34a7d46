"""A simulation's body takes JSON values as the schema types them, and guards by the rules the
schema states (bad guard numbers were a 500)."""

import pytest

from simulations.models import Simulation
from tests.factories import make_machine
from tests.helpers import assert_error


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", 7),
        ("priority", "5"),
        ("priority", 5.0),
        ("required_gpus", True),
        ("preemptible", "yes"),
        ("preemptible", 1),
        ("max_duration", "60"),
        ("pinned_machine", "1"),
        ("machine_id", 1.0),
        ("status", "running"),
        ("name", "   "),
        ("name", "a\x00b"),
    ],
)
def test_a_value_of_another_type_is_refused_and_nothing_is_stored(api, field, value):
    make_machine()
    body = {"name": "typed", field: value} if field != "name" else {"name": value}
    response = api.post("/simulations/", body, format="json")
    assert field in assert_error(response, 400, "invalid")["fields"]
    assert not Simulation.objects.exists()


@pytest.mark.parametrize(
    "guards",
    [
        {"plateau": {"window": 10, "min_delta": 10**400}},
        {"divergence": {"factor": 10**400}},
        {"plateau": {"window": 10, "min_delta": 1e13}},
        {"plateau": {"window": 10, "extra": 1}},
        {"unknown": True},
        {"stall_seconds": 1.5},
    ],
)
def test_guards_outside_the_schema_are_a_400_not_a_500(api, guards):
    response = api.post("/simulations/", {"name": "guarded", "guards": guards}, format="json")
    assert "guards" in assert_error(response, 400, "invalid")["fields"]
    assert not Simulation.objects.exists()


def test_guards_inside_the_schema_are_stored(api):
    guards = {"plateau": {"metric": "val/loss", "window": 100, "min_delta": 0.5}, "nan": False}
    response = api.post("/simulations/", {"name": "guarded", "guards": guards}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["guards"]["plateau"]["window"] == 100
