"""Hostile and broken input: a 4xx in the error shape, never a 500, and nothing written."""

import json
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from convergence.models import ConvergencePoint
from convergence.services import Point, points_ingest
from machines.models import Machine
from simulations.models import Simulation
from tests.factories import agent_client, make_machine, make_simulation
from tests.security.helpers import error_of

INJECTIONS = [
    "x'); DROP TABLE simulations; --",
    "1 OR 1=1",
    "'; SELECT pg_sleep(5); --",
    "1; DELETE FROM convergence_data; --",
    '" OR ""="',
]
TOO_LONG_NAME = "n" * 201


def _counts() -> tuple[int, int, int]:
    return Machine.objects.count(), Simulation.objects.count(), ConvergencePoint.objects.count()


@pytest.fixture
def running(staff):
    """A machine and a simulation scheduled on it, with one stored point; returns both."""
    machine = make_machine()
    simulation = make_simulation(owner=staff)
    simulation.refresh_from_db()
    assert simulation.machine_id == machine.pk
    points_ingest(simulation_id=simulation.pk, points=[Point(0, 1.0, timezone.now())])
    return machine, simulation


def _post_raw(client, path: str, body: str | bytes):
    return client.generic("POST", path, body, content_type="application/json")


def _assert_invalid(response, field: str | None = None):
    assert response.status_code == 400, response.content[:500]
    error = error_of(response)
    if field is not None:
        assert field in json.dumps(error.get("fields", {})), error
    return error


# --- Malformed bodies -------------------------------------------------------------------------


MALFORMED = ['{"name": ', "not json", "[1, 2", '{"name": "a",}', "\x00\x01", '{"a": 1} trailing']


@pytest.mark.parametrize("body", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_json_is_a_400_in_the_error_shape(staff_api, running, body):
    _, simulation = running
    before = _counts()
    for path in [
        "/simulations/",
        "/machines/",
        "/convergence/data",
        f"/convergence/{simulation.pk}/points",
        f"/convergence/{simulation.pk}/add-bare-sql",
    ]:
        response = _post_raw(staff_api, path, body)
        assert response.status_code == 400, (path, response.content[:300])
        assert error_of(response)["code"] == "parse_error"
    assert _counts() == before


def test_a_json_body_that_is_not_an_object_is_rejected(staff_api, running):
    _, simulation = running
    before = _counts()
    for body in ["[]", "42", '"points"', "null"]:
        for path in ["/simulations/", f"/convergence/{simulation.pk}/points", "/convergence/data"]:
            assert _post_raw(staff_api, path, body).status_code == 400, (path, body)
    assert _counts() == before


def test_a_body_over_the_request_limit_is_a_413(staff_api, running):
    _, simulation = running
    point = {"step": 1, "loss_value": 0.5}
    count = settings.MAX_REQUEST_BYTES // len(json.dumps(point)) + 10
    body = json.dumps({"points": [{**point, "step": i + 1} for i in range(count)]})
    assert len(body) > settings.MAX_REQUEST_BYTES
    before = _counts()
    response = _post_raw(staff_api, f"/convergence/{simulation.pk}/points", body)
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"
    big_name = _post_raw(staff_api, "/simulations/", json.dumps({"name": "x" * len(body)}))
    assert big_name.status_code == 413
    assert _counts() == before


# --- Points -----------------------------------------------------------------------------------


BAD_POINT_FIELDS = [
    ("loss_value", "NaN"),
    ("loss_value", "Infinity"),
    ("loss_value", "-Infinity"),
    ("loss_value", "nan"),
    ("loss_value", "1e999"),
    ("loss_value", None),
    ("loss_value", "abc"),
    ("step", -1),
    ("step", 2**31),
    ("step", 2**63),
    ("step", 1.5),
    ("step", "seven"),
    ("timestamp", "1999-12-31T23:59:59Z"),
    ("timestamp", "2999-01-01T00:00:00Z"),
    ("timestamp", "yesterday"),
]
BAD_POINT_IDS = [f"{field}={value!r}" for field, value in BAD_POINT_FIELDS]


@pytest.mark.parametrize(("field", "value"), BAD_POINT_FIELDS, ids=BAD_POINT_IDS)
def test_a_bad_single_point_is_rejected_and_nothing_is_stored(staff_api, running, field, value):
    _, simulation = running
    point = {"simulation_id": simulation.pk, "step": 1, "loss_value": 0.5, field: value}
    before = _counts()
    _assert_invalid(staff_api.post("/convergence/data", point, format="json"), field)
    del point["simulation_id"]
    bare = staff_api.post(f"/convergence/{simulation.pk}/add-bare-sql", point, format="json")
    _assert_invalid(bare, field)
    assert _counts() == before


@pytest.mark.parametrize(("field", "value"), BAD_POINT_FIELDS, ids=BAD_POINT_IDS)
def test_a_batch_with_one_bad_point_stores_none_of_it(staff_api, running, field, value):
    _, simulation = running
    points = [{"step": 1, "loss_value": 0.5}, {"step": 2, "loss_value": 0.4, field: value}]
    before = _counts()
    response = staff_api.post(
        f"/convergence/{simulation.pk}/points", {"points": points}, format="json"
    )
    error = _assert_invalid(response, field)
    assert "1" in error["fields"]["points"]  # the index of the bad point
    assert _counts() == before


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_bare_nan_and_infinity_literals_are_rejected(staff_api, running, literal):
    _, simulation = running
    before = _counts()
    bodies = {
        "/convergence/data": f'{{"simulation_id": {simulation.pk}, "loss_value": {literal}}}',
        f"/convergence/{simulation.pk}/points": f'{{"points": [{{"step": 5, "loss_value": {literal}}}]}}',  # noqa: E501
        f"/convergence/{simulation.pk}/add-bare-sql": f'{{"loss_value": {literal}}}',
    }
    for path, body in bodies.items():
        response = _post_raw(staff_api, path, body)
        assert response.status_code == 400, (path, response.content[:300])
        error_of(response)
    assert _counts() == before


def test_a_batch_over_ten_thousand_points_is_rejected(staff_api, running):
    _, simulation = running
    points = [{"step": i + 1, "loss_value": 1.0} for i in range(10_001)]
    before = _counts()
    response = staff_api.post(
        f"/convergence/{simulation.pk}/points", {"points": points}, format="json"
    )
    _assert_invalid(response, "points")
    assert _counts() == before


# --- Simulations and machines -----------------------------------------------------------------


BAD_SIMULATION_FIELDS = [
    ("name", ""),
    ("name", TOO_LONG_NAME),
    ("priority", 1001),
    ("priority", -1001),
    ("priority", "high"),
    ("required_memory", 0),
    ("required_memory", -8),
    ("required_gpus", -1),
    ("required_cpu_cores", -1),
    ("required_gpus", 2**31),
    ("status", "exploded"),
    ("status", "running"),
    ("pinned_machine", 999_999),
]


@pytest.mark.parametrize(
    ("field", "value"),
    BAD_SIMULATION_FIELDS,
    ids=[f"{f}={v!r}"[:40] for f, v in BAD_SIMULATION_FIELDS],
)
def test_a_bad_simulation_is_rejected_and_nothing_is_stored(api, field, value):
    make_machine()
    before = _counts()
    response = api.post("/simulations/", {"name": "ok", field: value}, format="json")
    _assert_invalid(response, field)
    assert _counts() == before


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", ""), ("name", TOO_LONG_NAME), ("priority", 5000), ("status", "exploded")],
)
def test_a_bad_simulation_edit_changes_nothing(api, user, field, value):
    simulation = make_simulation(owner=user, name="kept", priority=3)
    response = api.patch(f"/simulations/{simulation.pk}", {field: value}, format="json")
    _assert_invalid(response, field)
    simulation.refresh_from_db()
    assert (simulation.name, simulation.priority, simulation.status) == ("kept", 3, "pending")


BAD_MACHINE_FIELDS = [
    ("name", ""),
    ("name", TOO_LONG_NAME),
    ("cpu", TOO_LONG_NAME),
    ("memory", 0),
    ("memory", -512),
    ("gpu_count", -1),
    ("cpu_cores", 0),
    ("hourly_cost", "-1.00"),
    ("hourly_cost", "NaN"),
    ("memory", 2**31),
]


@pytest.mark.parametrize(
    ("field", "value"), BAD_MACHINE_FIELDS, ids=[f"{f}={v!r}"[:40] for f, v in BAD_MACHINE_FIELDS]
)
def test_a_bad_machine_is_rejected_and_nothing_is_stored(staff_api, field, value):
    machine = {"name": "m", "cpu": "EPYC", "memory": 64, field: value}
    before = _counts()
    _assert_invalid(staff_api.post("/machines/", machine, format="json"), field)
    assert _counts() == before


@pytest.mark.parametrize("status", ["exploded", "", None, "busy"])
def test_an_unknown_or_scheduler_only_machine_status_is_rejected(staff_api, status):
    machine = make_machine()
    response = staff_api.patch(f"/machines/{machine.pk}/status", {"status": status}, format="json")
    _assert_invalid(response)
    machine.refresh_from_db()
    assert machine.status == Machine.Status.AVAILABLE


@pytest.mark.parametrize(
    "query",
    [
        "max_points=abc",
        "max_points=-1",
        "max_points=10001",
        "from_step=-5",
        "to_step=2147483648",
        "from_step=10&to_step=2",
    ],
)
def test_bad_graph_parameters_are_rejected(api, query):
    simulation = make_simulation()
    response = api.get(f"/convergence/{simulation.pk}/graph?{query}")
    _assert_invalid(response)


# --- SQL injection through every bare-SQL path ------------------------------------------------


def _tables_intact(expected_counts) -> None:
    assert _counts() == expected_counts
    with connection.cursor() as cursor:
        for table in ["machines", "simulations", "convergence_data", "convergence_rollup"]:
            cursor.execute(f"SELECT count(*) FROM {table}")
            cursor.fetchone()


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_in_a_bare_sql_simulation_name_is_stored_as_text(staff_api, running, text):
    machine, _ = running
    before = _counts()
    response = staff_api.post(
        f"/simulations/{machine.pk}/create-bare-sql", {"name": text}, format="json"
    )
    assert response.status_code == 201
    created = response.json()
    assert created["name"] == text
    detailed = staff_api.get(f"/simulations/{created['id']}/detailed").json()
    assert detailed["name"] == text
    assert Simulation.objects.get(pk=created["id"]).name == text
    _tables_intact((before[0], before[1] + 1, before[2]))


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_in_bare_sql_paths_and_ids_is_not_found(staff_api, running, text):
    machine, simulation = running
    before = _counts()
    encoded = quote(text, safe="")
    for method, path in [
        ("post", f"/simulations/{encoded}/create-bare-sql"),
        ("get", f"/simulations/{encoded}/detailed"),
        ("post", f"/convergence/{encoded}/add-bare-sql"),
        ("get", f"/convergence/{encoded}/graph"),
        ("get", f"/convergence/{simulation.pk}%20{encoded}/graph"),
    ]:
        response = getattr(staff_api, method)(path, {"name": "x", "loss_value": 1}, format="json")
        assert response.status_code == 404, (path, response.content[:300])
        error_of(response)
    _tables_intact(before)


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_in_bare_sql_point_fields_is_rejected(staff_api, running, text):
    _, simulation = running
    before = _counts()
    for field in ["loss_value", "step", "timestamp"]:
        point = {"step": 7, "loss_value": 0.25, field: text}
        response = staff_api.post(
            f"/convergence/{simulation.pk}/add-bare-sql", point, format="json"
        )
        _assert_invalid(response, field)
        batch = staff_api.post(
            f"/convergence/{simulation.pk}/points", {"points": [point]}, format="json"
        )
        _assert_invalid(batch, field)
    _tables_intact(before)


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_in_graph_parameters_is_rejected(staff_api, running, text):
    _, simulation = running
    before = _counts()
    for parameter in ["max_points", "from_step", "to_step"]:
        response = staff_api.get(f"/convergence/{simulation.pk}/graph", {parameter: text})
        _assert_invalid(response, parameter)
    stream = staff_api.get(f"/convergence/{simulation.pk}/stream", {"since_step": text})
    _assert_invalid(stream, "since_step")
    _tables_intact(before)


def test_an_agent_token_cannot_smuggle_a_bare_sql_simulation(running):
    machine, _ = running
    before = _counts()
    response = agent_client(machine).post(
        f"/simulations/{machine.pk}/create-bare-sql", {"name": INJECTIONS[0]}, format="json"
    )
    assert response.status_code == 403
    _tables_intact(before)
