"""The simulation page's output panel (static/js/dashboard/logs.js) in headless Chromium."""

import pytest
from rest_framework.authtoken.models import Token

from machines.services import machine_agent_user
from simulations.logs import LogInput, log_lines_append
from tests.e2e.conftest import PASSWORD, api, orm, screenshot, sign_in
from tests.factories import make_machine, make_simulation, make_user

pytestmark = pytest.mark.e2e

SHOWN = """() => [...document.querySelectorAll("#log-lines .log-line")]
    .map((row) => [Number(row.dataset.seq), row.className.split(" ")[1], row.textContent])"""
HAS_SEQS = """(count) => document.querySelectorAll("#log-lines .log-line").length >= count"""


def _placed():
    user = make_user("operator", password=PASSWORD)
    machine = make_machine(name="gpu-h100-01")
    simulation = make_simulation(name="llama-7b-finetune", owner=user, command=["python"])
    agent = Token.objects.get_or_create(user=machine_agent_user(machine=machine))[0].key
    return user, simulation.pk, agent


def _lines(first: int, count: int, stream: str = "stdout") -> list[dict]:
    return [{"seq": s, "stream": stream, "line": f"step {s}"} for s in range(first, first + count)]


def _open(page, server, user, simulation_id):
    sign_in(page, server, user.username)
    page.goto(f"{server.url}/dashboard/simulations/{simulation_id}")
    page.wait_for_selector('#connection[data-state="live"]')


def test_shipped_lines_appear_live_as_text_with_stderr_marked(live, page):
    user, simulation_id, agent = orm(_placed)
    _open(page, live, user, simulation_id)
    body = {"lines": [*_lines(0, 2), {"seq": 2, "stream": "stderr", "line": "<b>Traceback</b>"}]}
    api(live, agent, "POST", f"/simulations/{simulation_id}/logs", body)
    page.wait_for_function(HAS_SEQS, arg=3)
    assert page.evaluate(f"({SHOWN})()") == [
        [0, "stdout", "step 0"],
        [1, "stdout", "step 1"],
        [2, "stderr", "<b>Traceback</b>"],
    ]
    assert page.text_content("#log-count") == "3 lines"
    screenshot(page, "simulation-logs")


def test_lines_shipped_while_the_server_was_down_appear_once_in_order_after_reconnect(live, page):
    user, simulation_id, agent = orm(_placed)
    orm(
        log_lines_append,
        simulation_id=simulation_id,
        lines=[LogInput(s, "stdout", f"step {s}") for s in range(5)],
    )
    _open(page, live, user, simulation_id)
    page.wait_for_function(HAS_SEQS, arg=5)
    live.stop()
    page.wait_for_selector('#connection[data-state="reconnecting"]')
    orm(
        log_lines_append,
        simulation_id=simulation_id,
        lines=[LogInput(s, "stdout", f"step {s}") for s in range(5, 1500)],
    )
    live.start()
    page.wait_for_function(HAS_SEQS, arg=1500, timeout=20_000)
    api(live, agent, "POST", f"/simulations/{simulation_id}/logs", {"lines": _lines(1500, 1)})
    page.wait_for_function(HAS_SEQS, arg=1501)
    shown = page.evaluate(f"({SHOWN})()")
    assert [seq for seq, _, _ in shown] == list(range(1501))
