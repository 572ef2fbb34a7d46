"""Property-based fuzzing of the whole OpenAPI schema (/schema) with schemathesis, as staff.

Every operation gets a bounded number of generated requests (valid and invalid ones), with a
fixed seed and no shrinking so the run's length is bounded. Every schemathesis check runs:
no 5xx, every answer one the schema documents, every request the schema calls valid accepted
and every one it calls invalid refused. The few rules OpenAPI 3.0 cannot state are listed in
UNSTATABLE_RULES, each with its reason; the API refuses them with a 400 naming the field.
"""

import re
from fnmatch import fnmatchcase

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import CHECKS as REGISTERED_CHECKS
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from convergence.serializers import ERR_METRIC, ERR_TIMESTAMP_RANGE, ERR_TWICE
from tests.factories import make_machine, make_simulation, make_user
from tests.security.helpers import token_key

EXAMPLES_PER_OPERATION = 15

# (operation, field path with * for any key or index, message pattern): a schema-valid request
# the API may still refuse with a 400 naming only such fields. Each is a rule the schema states
# in words (a description) because OpenAPI 3.0 has no keyword for it.
_POINT_WRITES = ("POST /convergence/data/", "POST /convergence/{simulation_id}/add-bare-sql/")
_BATCH = "POST /convergence/{simulation_id}/points/"
_SIMULATION_WRITES = ("POST /simulations/", "PUT /simulations/{id}/", "PATCH /simulations/{id}/")
_MACHINE_WRITES = ("POST /machines/", "PUT /machines/{id}/", "PATCH /machines/{id}/")
_WINDOWS = ("GET /convergence/{simulation_id}/graph/", "GET /convergence/compare/")
UNSTATABLE_RULES = [
    # A time relative to now (2000-01-01 to a day from now): JSON Schema compares no dates.
    *[(op, "timestamp", re.escape(ERR_TIMESTAMP_RANGE)) for op in _POINT_WRITES],
    (_BATCH, "points.*.timestamp", re.escape(ERR_TIMESTAMP_RANGE)),
    # One item against another (a metric and step twice with different values).
    (_BATCH, "points.*.step", re.escape(ERR_TWICE)),
    # A pattern for an object's keys (metric names, environment variable names): 3.0 has no
    # propertyNames.
    (_BATCH, "points.*.values.*", re.escape(ERR_METRIC)),
    *[
        (op, "env", "is not an environment variable name|are set by the agent")
        for op in _SIMULATION_WRITES
    ],
    # One parameter against another (to_step >= from_step): a 400 names the mistake, where an
    # empty window would hide a client's swapped bounds.
    *[(op, "to_step", "Must not be less than from_step") for op in _WINDOWS],
    # A unique name must be free, a reference must name a stored row: state, not shape.
    *[(op, "name", "already exists") for op in _MACHINE_WRITES],
    *[
        (op, field, "object does not exist")
        for op in _SIMULATION_WRITES
        for field in ("pinned_machine", "machine_id")
    ],
]


def _field_errors(fields, prefix=""):
    """(path, message) of every message in the error shape's `fields`."""
    for key, value in fields.items():
        path = f"{prefix}{key}"
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                yield from _field_errors(item, f"{path}.")
            else:
                yield path, str(item)


def _refused_by_unstatable_rule(case, response) -> bool:
    if response.status_code != 400:
        return False
    try:
        fields = response.json()["error"]["fields"]
    except (ValueError, KeyError, TypeError):
        return False
    rules = [(p, m) for op, p, m in UNSTATABLE_RULES if op == case.operation.label]
    errors = list(_field_errors(fields))
    return bool(errors) and all(
        any(fnmatchcase(path, pattern) and re.search(message, text) for pattern, message in rules)
        for path, text in errors
    )


@schemathesis.check
def positive_data_accepted_unless_unstatable(ctx, response, case):
    """positive_data_acceptance, except for a 400 that names only UNSTATABLE_RULES."""
    if _refused_by_unstatable_rule(case, response):
        return None
    return positive_data_acceptance(ctx, response, case)


CHECKS = [
    check
    for check in REGISTERED_CHECKS.get_all()
    if check not in (positive_data_acceptance, positive_data_accepted_unless_unstatable)
] + [positive_data_accepted_unless_unstatable]

# A body past MAX_REQUEST_BYTES (4 MiB: 256 arguments of 32,768 characters fit the schema) is
# refused with 413 before it is read: a rejection for both checks, though no JSON Schema rule.
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
            },
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "3xx", 401, 403, 404, 409, 413, 429]
            },
        }
    }
)


@pytest.fixture
def staff_token(transactional_db) -> str:
    """Staff's token, with a little data for path ids to hit (ids 1 and 2 on a fresh table)."""
    staff = make_user("fuzz-operator", staff=True)
    machine = make_machine()
    make_simulation(owner=staff, pinned_machine=machine)
    make_simulation(owner=staff)
    return token_key(staff)


# Loaded at collection from the live /schema view (no database access: an anonymous GET).
schema = schemathesis.openapi.from_wsgi(
    "/schema?format=json", get_wsgi_application(), config=CONFIG
)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(case, staff_token):
    case.call_and_validate(headers={"Authorization": f"Token {staff_token}"}, checks=CHECKS)
