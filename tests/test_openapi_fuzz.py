"""Property-based fuzzing of the whole OpenAPI schema (/schema) with schemathesis, as staff.

Every operation gets a bounded number of generated requests (valid and invalid ones), with a
fixed seed and no shrinking so the run's length is bounded. Whatever comes in, the API
answers without a 5xx and with a response the schema documents.
"""

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.factories import make_machine, make_simulation, make_user
from tests.security.helpers import token_key

EXAMPLES_PER_OPERATION = 15
# The property under test: no 5xx, and every answer is one the schema documents.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture
def staff_token(transactional_db) -> str:
    """Staff's token, with a little data for path ids to hit (ids 1 and 2 on a fresh table)."""
    staff = make_user("fuzz-operator", staff=True)
    machine = make_machine()
    make_simulation(owner=staff, pinned_machine=machine)
    make_simulation(owner=staff)
    return token_key(staff)


# Loaded at collection from the live /schema view (no database access: an anonymous GET).
schema = schemathesis.openapi.from_wsgi("/schema?format=json", get_wsgi_application())


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
