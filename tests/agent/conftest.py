"""The agent and the client library as real processes against a real daphne server: nothing
here is mocked. Agents heartbeat every 0.5 s so the tests stay short."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from django.db import connection

from machines.services import machine_agent_user
from tests.factories import make_machine, make_simulation, make_user, token_client
from tests.security.helpers import token_key
from tests.servers import BIN, REPO, database_url, start_daphne

HEARTBEAT = 0.5
WAIT_SECONDS = 60

# This checkout's library, here and in every process the tests start, whatever the shared
# virtualenv has installed (an editable install points at one checkout, maybe not this one).
AGENT = str(REPO / "agent")
sys.path.insert(0, AGENT)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [AGENT, os.environ.get("PYTHONPATH")]))


@pytest.fixture
def server(transactional_db):
    daphne = start_daphne({"DATABASE_URL": database_url(connection.settings_dict)})
    yield daphne
    daphne.stop()


@pytest.fixture
def owner(transactional_db):
    return make_user("trainer")


@pytest.fixture
def owner_api(owner):
    return token_client(owner)


@pytest.fixture
def machine(transactional_db):
    return make_machine()


@pytest.fixture
def machine_token(machine) -> str:
    return token_key(machine_agent_user(machine=machine))


def wait_for(condition, what: str, timeout: float = WAIT_SECONDS):
    """Poll `condition` (another process is doing the work) until it is truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def simulation_running(owner, machine, command: list[str], **fields):
    simulation = make_simulation(owner=owner, pinned_machine=machine, command=command, **fields)
    simulation.refresh_from_db()
    assert simulation.machine_id == machine.pk
    return simulation


class AgentProcess:
    """`simsched-agent` as a real process, with its state in `state_dir`."""

    def __init__(self, url: str, token: str, state_dir: Path, *extra: str):
        self.log = state_dir.with_name(state_dir.name + ".log")
        env = {**os.environ, "SIMSCHED_TOKEN": token}
        self.proc = subprocess.Popen(
            [
                str(BIN / "simsched-agent"),
                "--url",
                url,
                "--state-dir",
                str(state_dir),
                "--heartbeat",
                str(HEARTBEAT),
                "--claim-interval",
                "0.2",
                "--grace",
                "3",
                "-v",
                *extra,
            ],
            cwd=REPO,
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def agents(tmp_path):
    """Start agents with `agents(url, token)`; all are stopped at the end."""
    started = []

    def start(url: str, token: str, state: str = "state", *extra: str) -> AgentProcess:
        agent = AgentProcess(url, token, tmp_path / state, *extra)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


PYTHON = sys.executable
