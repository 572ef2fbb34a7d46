"""Builders for test data. Writes go through the services, as the API's do."""

from decimal import Decimal
from itertools import count

from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from machines.models import Machine
from machines.services import machine_agent_user, machine_create
from simulations.models import Simulation
from simulations.services import simulation_create

_names = count(1)


def make_user(username: str | None = None, *, staff: bool = False, password: str = "pw-123456"):
    username = username or f"user{next(_names)}"
    return get_user_model().objects.create_user(
        username=username, password=password, is_staff=staff, is_superuser=staff
    )


def make_machine(**fields) -> Machine:
    defaults = {
        "name": f"machine-{next(_names)}",
        "cpu": "AMD EPYC 9654",
        "gpu": "8x NVIDIA H100",
        "memory": 512,
        "cpu_cores": 96,
        "gpu_count": 8,
        "hourly_cost": Decimal("30.00"),
    }
    return machine_create(**{**defaults, **fields})


def make_simulation(**fields) -> Simulation:
    defaults = {"name": f"sim-{next(_names)}"}
    return simulation_create(**{**defaults, **fields})


def token_client(user) -> APIClient:
    """A client that authenticates the way scripts do: `Authorization: Token <key>`."""
    token, _ = Token.objects.get_or_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def agent_client(machine: Machine) -> APIClient:
    return token_client(machine_agent_user(machine=machine))
