"""A machine's body takes JSON values as the schema types them: numbers are not text, text is
not a number, and money is a decimal string."""

import pytest

from tests.factories import make_machine
from tests.helpers import assert_error
from tests.machines.test_api import machine_payload


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("memory", "512"),
        ("memory", 512.0),
        ("memory", True),
        ("gpu_count", "8"),
        ("name", 5),
        ("cpu", False),
        ("hourly_cost", 30),
        ("hourly_cost", 30.5),
        ("hourly_cost", "1e2"),
        ("hourly_cost", " 5"),
        ("hourly_cost", "-1.00"),
        ("hourly_cost", ""),
        ("hourly_cost", "5.001"),
        ("hourly_cost", "123456789.00"),
    ],
)
def test_a_value_of_another_type_or_spelling_is_refused_and_nothing_is_stored(
    staff_api, field, value
):
    response = staff_api.post("/machines/", machine_payload(**{field: value}), format="json")
    assert field in assert_error(response, 400, "invalid")["fields"]
    assert staff_api.get("/machines/").json()["count"] == 0


@pytest.mark.parametrize(("sent", "stored"), [("5", "5.00"), ("5.5", "5.50"), ("0.25", "0.25")])
def test_hourly_cost_as_a_decimal_string_is_stored_to_the_cent(staff_api, sent, stored):
    response = staff_api.post("/machines/", machine_payload(hourly_cost=sent), format="json")
    assert response.status_code == 201, response.content
    assert response.json()["hourly_cost"] == stored


def test_status_endpoint_requires_a_status(staff_api):
    machine = make_machine()
    response = staff_api.patch(f"/machines/{machine.pk}/status", {}, format="json")
    assert "status" in assert_error(response, 400, "invalid")["fields"]
