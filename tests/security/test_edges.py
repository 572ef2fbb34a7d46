"""Numbers at the edges of every machine and simulation field, hostile ids in paths, hostile
filters and orderings, and derived values: a 4xx in the error shape (writing nothing), never a
5xx, on SQLite and on PostgreSQL (where int4 columns overflow at 2**31)."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from machines.models import Machine
from simulations.models import Simulation
from tests.factories import make_machine, make_simulation
from tests.helpers import assert_error, error_of

pytestmark = pytest.mark.django_db(transaction=True)

# JSON literals no integer or money field of ours accepts.
ALWAYS_INVALID = [
    "1" + "0" * 400,
    str(2**31),
    str(2**63),
    str(2**64),
    str(-(2**31) - 1),
    "1e400",
    "-1e400",
    "true",
    '"abc"',
    '"NaN"',
    '"Infinity"',
    "[1]",
    '{"a": 1}',
]
# Accepted by some fields, refused by others: never a 5xx, and a refusal writes nothing.
SOMETIMES_VALID = ["-1", "0", "1.5", "1e10", "null", '""', '"7"', "1000", "-1000"]

MACHINE_NUMBER_FIELDS = ["memory", "cpu_cores", "gpu_count", "hourly_cost"]
SIMULATION_NUMBER_FIELDS = [
    "priority",
    "required_gpus",
    "required_memory",
    "required_cpu_cores",
    "pinned_machine",
    "machine_id",
]


def _state() -> tuple:
    return (
        list(Machine.objects.order_by("pk").values()),
        list(Simulation.objects.order_by("pk").values()),
    )


def _send(client, method: str, path: str, body: str):
    return client.generic(method, path, body, content_type="application/json")


def _check_all(client, requests) -> list:
    """Send each (method, path, body, must_be_400); returns what went wrong."""
    wrong = []
    for method, path, body, must_be_400 in requests:
        before = _state()
        response = _send(client, method, path, body)
        code = response.status_code
        if code >= 500 or (must_be_400 and code != 400):
            wrong.append((method, path, body[:60], code))
        elif code >= 400:
            error_of(response)
            if _state() != before:
                wrong.append((method, path, body[:60], code, "changed"))
    return wrong


def _cases(values, must_be_400):
    return [(value, must_be_400) for value in values]


ALL_VALUES = _cases(ALWAYS_INVALID, True) + _cases(SOMETIMES_VALID, False)


@pytest.mark.parametrize("field", MACHINE_NUMBER_FIELDS)
def test_machine_numbers_at_the_edges_are_400_never_500(staff_api, field):
    machine = make_machine()
    requests = []
    for index, (value, must_be_400) in enumerate(ALL_VALUES):
        create = f'{{"name": "edge-{index}", "cpu": "c", "memory": 8, "{field}": {value}}}'
        requests.append(("POST", "/machines/", create, must_be_400))
        requests.append(
            ("PATCH", f"/machines/{machine.pk}", f'{{"{field}": {value}}}', must_be_400)
        )
    assert _check_all(staff_api, requests) == []


@pytest.mark.parametrize("field", SIMULATION_NUMBER_FIELDS)
def test_simulation_numbers_at_the_edges_are_400_never_500(api, user, field):
    make_machine()
    simulation = make_simulation(owner=user, required_gpus=999)  # stays pending: editable
    path = f"/simulations/{simulation.pk}"
    requests = []
    for value, must_be_400 in ALL_VALUES:
        requests += [
            ("POST", "/simulations/", f'{{"name": "edge", "{field}": {value}}}', must_be_400),
            ("PATCH", path, f'{{"{field}": {value}}}', must_be_400),
            ("PUT", path, f'{{"name": "edge", "{field}": {value}}}', must_be_400),
        ]
    assert _check_all(api, requests) == []


@pytest.mark.parametrize("template", ["{pk}.5", "{pk}.0", "{pk}e0", '"{pk}.0"', '" {pk}"', "true"])
def test_a_machine_reference_must_be_an_integer(api, template):
    """DRF's related field looked up pk=2.5 as machine 2 (and true as machine 1)."""
    machine = make_machine()
    value = template.format(pk=machine.pk)
    response = _send(
        api, "POST", "/simulations/", f'{{"name": "pinned", "pinned_machine": {value}}}'
    )
    assert response.status_code == 400
    assert "pinned_machine" in error_of(response)["fields"]
    assert not Simulation.objects.exists()


def test_a_machine_reference_as_digits_is_refused_as_the_schema_types_it(api):
    # JSON bodies only (no HTML forms): an id is an integer, as the schema says, and "7" is
    # text, refused as the point writes refuse "step": "7".
    machine = make_machine()
    body = f'{{"name": "pinned", "pinned_machine": "{machine.pk}"}}'
    response = _send(api, "POST", "/simulations/", body)
    assert "pinned_machine" in assert_error(response, 400, "invalid")["fields"]


@pytest.mark.parametrize(
    "value", ["1e400", "abc", "1" * 30, "-1", "0", "1.5", "9223372036854775808"]
)
def test_machine_status_and_fail_reason_with_hostile_values_are_400(staff_api, value):
    machine = make_machine()
    simulation = make_simulation()
    assert (
        _check_all(
            staff_api,
            [
                ("PATCH", f"/machines/{machine.pk}/status", f'{{"status": {value}}}', True),
                ("POST", f"/simulations/{simulation.pk}/fail", f'{{"reason": [{value}]}}', True),
            ],
        )
        == []
    )


HUGE_IDS = ["9223372036854775808", "99999999999999999999999", "0", "2147483648"]


@pytest.mark.parametrize("huge", HUGE_IDS)
def test_ids_no_row_can_have_are_404(staff_api, huge):
    paths = [
        f"/machines/{huge}",
        f"/machines/{huge}/status",
        f"/simulations/{huge}",
        f"/simulations/{huge}/detailed",
        f"/simulations/{huge}/cancel",
        f"/simulations/{huge}/create-bare-sql",
        f"/simulations/{huge}/start",
        f"/simulations/{huge}/heartbeat",
        f"/convergence/{huge}/points",
        f"/convergence/{huge}/add-bare-sql",
    ]
    before = _state()
    for path in paths:
        for method in ["GET", "POST", "PATCH", "PUT", "DELETE"]:
            response = _send(staff_api, method, path, '{"name": "x", "status": "maintenance"}')
            # 400 where the body is checked first (a point write without points)
            assert response.status_code in (400, 404, 405), (method, path, response.status_code)
            error_of(response)
    assert _state() == before


HOSTILE_QUERY_VALUES = [
    "1e400",
    "abc",
    "99999999999999999999999",
    "9223372036854775808",
    "2147483648",
    "-1",
    "1.5",
    "\x00",
    "",
    "true",
    "'; DROP TABLE machines; --",
    "-",
    "__",
    "name__foo",
    "?",
]
SIMULATION_QUERY = [
    "status",
    "machine",
    "pinned_machine",
    "owner",
    "name",
    "created_after",
    "created_before",
    "ordering",
    "page",
    "page_size",
    "cursor",
]
MACHINE_QUERY = ["status", "name", "min_gpus", "min_memory", "ordering", "page", "cursor"]


@pytest.mark.parametrize(
    ("path", "params"), [("/simulations/", SIMULATION_QUERY), ("/machines/", MACHINE_QUERY)]
)
def test_hostile_filters_orderings_and_pages_are_never_a_500(api, user, path, params):
    make_simulation(owner=user)
    make_machine()
    wrong = []
    for param in params:
        for value in HOSTILE_QUERY_VALUES:
            response = api.get(path, {param: value})
            if response.status_code not in (200, 400, 404):
                wrong.append((param, value, response.status_code))
            elif response.status_code != 200:
                error_of(response)
    assert wrong == []


def test_a_huge_page_number_is_404_in_the_error_shape(api):
    make_simulation()
    response = api.get("/simulations/", {"page": "9" * 30})
    assert response.status_code == 404
    error_of(response)


def test_a_costly_long_run_does_not_break_the_simulation_list(api, staff):
    """cost = hourly cost x time on the machine can pass any digit cap the stored fields have."""
    machine = make_machine(hourly_cost=Decimal("99999999.99"))
    simulation = make_simulation(owner=staff)
    long_ago = timezone.now() - timedelta(days=3650)
    Simulation.objects.filter(pk=simulation.pk).update(
        status=Simulation.Status.RUNNING, scheduled_at=long_ago, started_at=long_ago
    )
    listed = api.get("/simulations/")
    assert listed.status_code == 200
    cost = Decimal(listed.json()["results"][0]["cost"])
    assert cost > Decimal("10") ** 12
    assert api.get(f"/simulations/{simulation.pk}").status_code == 200
    assert Simulation.objects.get(pk=simulation.pk).machine_id == machine.pk


def test_a_fleet_whose_hourly_total_passes_twelve_digits_has_a_utilisation(api):
    # Straight to the table: 101 machines through the service would cost seconds.
    Machine.objects.bulk_create(
        Machine(name=f"dear-{i}", cpu="c", memory=8, hourly_cost=Decimal("99999999.99"))
        for i in range(101)
    )
    response = api.get("/machines/utilisation")
    assert response.status_code == 200
    assert Decimal(response.json()["idle_hourly_cost"]) == Decimal("10099999998.99")
