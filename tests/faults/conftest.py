"""Fault tests run real daphne processes (and their own Redis / PostgreSQL when a test breaks
one): nothing here is mocked."""

import pytest
from django.db import connection

from tests.factories import make_machine, make_simulation
from tests.security.helpers import token_key
from tests.servers import database_url


@pytest.fixture
def test_database_url(transactional_db) -> str:
    """The test database, as a URL another process can open (data committed, not rolled back)."""
    return database_url(connection.settings_dict)


@pytest.fixture
def agent_run(transactional_db):
    """A machine, a simulation scheduled on it, and the machine agent's token."""
    from machines.services import machine_agent_user

    machine = make_machine()
    simulation = make_simulation(pinned_machine=machine)
    simulation.refresh_from_db()
    assert simulation.machine_id == machine.pk
    return simulation, token_key(machine_agent_user(machine=machine))
