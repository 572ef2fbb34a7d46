"""Redis (the channel layer) goes away and comes back under a running daphne: writes keep being
stored, /health says what is down, and live updates resume once Redis is back."""

import json
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from convergence.models import ConvergencePoint
from tests.servers import http, redis_available, start_daphne, start_redis

pytestmark = [pytest.mark.slow, pytest.mark.redis]
RECONNECT_SECONDS = 30


@pytest.fixture
def redis_server():
    if not redis_available():
        pytest.skip("redis-server is not installed")
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def server(test_database_url, redis_server):
    daphne = start_daphne(
        {
            "DATABASE_URL": test_database_url,
            "REDIS_URL": redis_server.url,
            "REDIS_PREFIX": "sec-faults",
        }
    )
    yield daphne
    daphne.stop()


def _batch(first: int, count: int) -> dict:
    return {
        "points": [{"step": s, "loss_value": 1.0 / (s + 1)} for s in range(first, first + count)]
    }


def _next_message(ws, wanted: str) -> dict:
    while True:
        message = json.loads(ws.recv(timeout=10))
        if message["type"] == wanted:
            return message


def _wait_until_healthy(server) -> None:
    """Readiness, not a timing assertion: poll /health until the layer answers again."""
    deadline = time.monotonic() + RECONNECT_SECONDS
    while time.monotonic() < deadline:
        if http("GET", f"{server.url}/health").status == 200:
            return
        time.sleep(0.5)
    pytest.fail(f"/health did not recover after Redis came back\n{server.output()[-3000:]}")


def test_points_are_stored_while_redis_is_down_and_live_updates_resume(
    server, redis_server, agent_run
):
    simulation, token = agent_run
    points_url = f"{server.url}/convergence/{simulation.pk}/points"
    assert http("GET", f"{server.url}/health").status == 200

    redis_server.stop()
    stored = http("POST", points_url, token=token, body=_batch(0, 50))
    assert stored.status == 200, stored.body
    assert stored.json() == {"stored": 50, "duplicates": 0}
    single = http(
        "POST",
        f"{server.url}/convergence/data",
        token=token,
        body={"simulation_id": simulation.pk, "step": 50, "loss_value": 0.02},
    )
    assert single.status == 201, single.body
    assert ConvergencePoint.objects.filter(simulation=simulation).count() == 51

    health = http("GET", f"{server.url}/health")
    assert health.status == 503
    assert health.json()["down"] == ["channel_layer"]
    assert health.json()["checks"]["database"]["ok"] is True

    redis_server.start()  # same port
    _wait_until_healthy(server)
    url = f"{server.ws_url}/ws/convergence/{simulation.pk}"
    with connect(url, additional_headers={"Authorization": f"Token {token}"}) as ws:
        snapshot = _next_message(ws, "snapshot")
        assert snapshot["raw_points"] == 51  # what was stored while Redis was down
        assert http("POST", points_url, token=token, body=_batch(51, 3)).status == 200
        live = _next_message(ws, "points")
    assert [p["step"] for p in live["points"]] == [51, 52, 53]
    assert ConvergencePoint.objects.filter(simulation=simulation).count() == 54


def test_a_watching_socket_is_closed_when_redis_goes_away_and_can_reconnect(
    server, redis_server, agent_run
):
    """The socket cannot tell what it misses while Redis is down, so the server closes it
    (1011) and the client reconnects and backfills, as the dashboard does."""
    simulation, token = agent_run
    url = f"{server.ws_url}/ws/convergence/{simulation.pk}"
    headers = {"Authorization": f"Token {token}"}
    with connect(url, additional_headers=headers) as ws:
        _next_message(ws, "snapshot")

        redis_server.stop()

        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=RECONNECT_SECONDS)
    assert closed.value.rcvd.code == 1011

    redis_server.start()
    _wait_until_healthy(server)
    with connect(url, additional_headers=headers) as ws:
        assert _next_message(ws, "snapshot")["simulation"]["id"] == simulation.pk
        points_url = f"{server.url}/convergence/{simulation.pk}/points"
        assert http("POST", points_url, token=token, body=_batch(0, 2)).status == 200
        assert [p["step"] for p in _next_message(ws, "points")["points"]] == [0, 1]
