"""bin/serve-http, the production server (uvicorn), as a real process: HTTP and WebSockets, and
metrics summed over its worker processes (prometheus_client's multiprocess mode)."""

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from tests.convergence.test_consumers import untimed
from tests.factories import make_simulation
from tests.security.helpers import token_key
from tests.servers import REPO, _stop_process, _wait_until, database_url, free_port, http

pytestmark = pytest.mark.slow


@pytest.fixture
def serve_http(transactional_db):
    started = []

    def start(**env):
        port = free_port()
        log = Path(tempfile.mkstemp(prefix="serve-http-", suffix=".log")[1])
        full_env = {
            **os.environ,
            "DATABASE_URL": database_url(connection.settings_dict),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            **env,
        }
        full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        proc = subprocess.Popen(
            [str(REPO / "bin" / "serve-http")],
            cwd=REPO,
            env=full_env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        started.append(proc)
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                http("GET", f"{url}/health", timeout=5)
            except OSError:
                return False
            return True

        _wait_until(answers, "bin/serve-http", proc, log)
        return url

    yield start
    for proc in started:
        _stop_process(proc)


def scrape(url: str) -> dict[tuple, float]:
    response = http("GET", f"{url}/metrics")
    assert response.status == 200, response.body
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.body.decode())
        for sample in family.samples
    }


def _next_message(ws, wanted: str) -> dict:
    while True:
        message = json.loads(ws.recv(timeout=10))
        if message["type"] == wanted:
            return message


def test_serve_http_serves_the_api_and_live_sockets(serve_http, user):
    url = serve_http(REDIS_URL="", WEB_CONCURRENCY="1")
    simulation = make_simulation(owner=user)
    token = token_key(user)
    ws_url = url.replace("http://", "ws://") + f"/ws/convergence/{simulation.pk}"
    with connect(ws_url, additional_headers={"Authorization": f"Token {token}"}) as ws:
        assert _next_message(ws, "snapshot")["raw_points"] == 0
        assert scrape(url)[("simsched_websocket_connections", ())] == 1
        posted = http(
            "POST",
            f"{url}/convergence/data",
            token=token,
            body={"simulation_id": simulation.pk, "step": 0, "loss_value": 0.75},
        )
        assert posted.status == 201, posted.body
        assert untimed(_next_message(ws, "points")["points"]) == [
            {"step": 0, "loss": 0.75, "metric": "loss"}
        ]
    samples = scrape(url)
    assert (
        samples[("simsched_points_ingested_total", (("endpoint", "convergence-add-point"),))] == 1
    )


@pytest.mark.redis
def test_metrics_of_two_workers_are_summed_in_one_scrape(serve_http, user):
    layer = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    url = serve_http(REDIS_URL=layer["hosts"][0], REDIS_PREFIX=layer["prefix"], WEB_CONCURRENCY="2")
    simulation = make_simulation(owner=user)
    token = token_key(user)
    for step in range(20):  # new connections, which the kernel spreads over both workers
        posted = http(
            "POST",
            f"{url}/convergence/data",
            token=token,
            body={"simulation_id": simulation.pk, "step": step, "loss_value": 1.0},
        )
        assert posted.status == 201, posted.body
    for _ in range(3):  # whichever worker answers, it reports all of them
        samples = scrape(url)
        endpoint = (("endpoint", "convergence-add-point"),)
        assert samples[("simsched_points_ingested_total", endpoint)] == 20
        assert samples[("simsched_write_request_duration_seconds_count", endpoint)] == 20
