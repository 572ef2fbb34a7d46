"""PostgreSQL stops under a running daphne and starts again: requests meanwhile get a clean
503 in the error shape, and the same daphne serves again once the database is back."""

import json
import threading
import time

import pytest

from tests.servers import http, manage, postgres_available, start_daphne, start_postgres

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
RECOVERY_SECONDS = 30
MAX_BACKGROUND_REQUESTS = 2000

SETUP = """
import json
from machines.services import machine_agent_user
from rest_framework.authtoken.models import Token
from tests.factories import make_machine, make_simulation
machine = make_machine()
simulation = make_simulation(pinned_machine=machine)
agent = machine_agent_user(machine=machine)
print(json.dumps({"simulation": simulation.pk, "token": Token.objects.create(user=agent).key}))
"""


@pytest.fixture
def cluster():
    if not postgres_available():
        pytest.skip("PostgreSQL 15 server binaries are not installed")
    server = start_postgres()
    yield server
    server.destroy()


@pytest.fixture
def served(cluster):
    cluster.create_database("simsched_faults")
    env = {"DATABASE_URL": cluster.url_for("simsched_faults")}
    manage("migrate", "--no-input", env=env)
    run = json.loads(manage("shell", "-c", SETUP, env=env).strip().splitlines()[-1])
    daphne = start_daphne(env, unset=("REDIS_URL",))
    yield daphne, run
    daphne.stop()


class Load:
    """GETs the simulation list in a loop from a thread, keeping every answer."""

    def __init__(self, url: str, token: str):
        self.url, self.token = url, token
        self.answers = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set() and len(self.answers) < MAX_BACKGROUND_REQUESTS:
            self.answers.append(http("GET", self.url, token=self.token))
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)


def _assert_clean_503(result) -> None:
    assert result.status == 503, result.body[:500]
    assert result.headers.get("Content-Type", "").startswith("application/json")
    text = result.body.decode()
    assert "Traceback" not in text and "<html" not in text.lower()
    assert result.json() == {
        "error": {
            "code": "database_unavailable",
            "message": "The database is unavailable; retry shortly.",
        }
    }


def _points(first: int, count: int) -> dict:
    return {
        "points": [{"step": s, "loss_value": 2.0 - s / 1000} for s in range(first, first + count)]
    }


def _retry_until_ok(send):
    deadline = time.monotonic() + RECOVERY_SECONDS
    while time.monotonic() < deadline:
        result = send()
        if result.status < 500:
            return result
        time.sleep(0.5)
    pytest.fail("requests did not succeed again after PostgreSQL came back")


def test_requests_get_a_clean_503_while_postgres_is_down_and_succeed_after(cluster, served):
    daphne, run = served
    token, simulation = run["token"], run["simulation"]
    points_url = f"{daphne.url}/convergence/{simulation}/points"
    list_url = f"{daphne.url}/simulations/"
    assert http("POST", points_url, token=token, body=_points(0, 100)).status == 200

    with Load(list_url, token) as load:
        time.sleep(0.3)
        cluster.stop()
        _assert_clean_503(http("POST", points_url, token=token, body=_points(100, 100)))
        _assert_clean_503(http("GET", list_url, token=token))
        _assert_clean_503(http("GET", f"{daphne.url}/convergence/{simulation}/graph", token=token))
        health = http("GET", f"{daphne.url}/health")
        assert health.status == 503
        assert health.json()["down"] == ["database"]
        cluster.start()
        stored = _retry_until_ok(
            lambda: http("POST", points_url, token=token, body=_points(100, 100))
        )
        time.sleep(0.3)

    assert stored.status == 200
    assert stored.json() == {"stored": 100, "duplicates": 0}
    assert {a.status for a in load.answers} <= {200, 503}
    assert 503 in {a.status for a in load.answers}, "the load never saw the outage"
    for answer in load.answers:
        if answer.status == 503:
            _assert_clean_503(answer)
    stream = http("GET", f"{daphne.url}/convergence/{simulation}/stream", token=token)
    assert stream.status == 200
    assert len(stream.json()["points"]) == 200
    assert http("GET", f"{daphne.url}/health").status == 200
    assert "Traceback" not in daphne.output()
