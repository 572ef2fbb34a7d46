"""What a simulation runs (command, env, working_dir) and its stdout/stderr lines, through the
HTTP API and the simulation's socket."""

import json

import pytest
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from simsched.asgi import application
from simulations.models import LogLine
from tests.factories import agent_client, make_machine, make_simulation, token_client
from tests.helpers import assert_error

LAUNCH = {
    "name": "train",
    "command": ["python", "train.py", "--lr", "3e-4"],
    "env": {"WANDB_MODE": "offline", "HF_TOKEN": "hf_secret"},
    "working_dir": "/srv/runs",
}


def _placed(user):
    """A simulation of `user` scheduled on a machine, and that machine's agent client."""
    machine = make_machine()
    simulation = make_simulation(
        owner=user, pinned_machine=machine, command=["true"], env={"SECRET": "s3"}
    )
    simulation.refresh_from_db()
    assert simulation.machine_id == machine.pk
    return simulation, agent_client(machine)


def _lines(first: int, count: int, stream: str = "stdout") -> dict:
    return {
        "lines": [
            {"seq": s, "stream": stream, "line": f"line {s}"} for s in range(first, first + count)
        ]
    }


# --- command, env, working_dir ------------------------------------------------------------------


def test_a_simulation_is_created_with_what_it_runs(api):
    response = api.post("/simulations/", LAUNCH, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["command"] == LAUNCH["command"]
    assert body["env"] == LAUNCH["env"]
    assert body["working_dir"] == "/srv/runs"


def test_env_is_hidden_from_other_users_in_detail_and_list(api, other_user):
    simulation_id = api.post("/simulations/", LAUNCH, format="json").json()["id"]
    other = token_client(other_user)
    detail = other.get(f"/simulations/{simulation_id}").json()
    assert "env" not in detail and detail["command"] == LAUNCH["command"]
    listed = other.get("/simulations/").json()["results"]
    assert all("env" not in item for item in listed)
    assert "hf_secret" not in other.get("/simulations/").content.decode()
    assert api.get(f"/simulations/{simulation_id}").json()["env"] == LAUNCH["env"]


def test_env_is_shown_to_staff_and_to_the_agent_that_launches_it(user, staff_api):
    simulation, agent = _placed(user)
    assert staff_api.get(f"/simulations/{simulation.pk}").json()["env"] == {"SECRET": "s3"}
    claimed = agent.post("/agent/claim")
    assert claimed.json()["env"] == {"SECRET": "s3"}
    other_agent = agent_client(make_machine())
    assert "env" not in other_agent.get(f"/simulations/{simulation.pk}").json()


@pytest.mark.parametrize("ends", ["finish", "cancel"])
def test_env_is_hidden_from_the_machines_agent_once_the_run_has_ended(user, other_user, ends):
    """The commands an agent runs hold its token: the next user's command on that machine must
    not read the env of the runs before it."""
    simulation, agent = _placed(user)
    assert agent.post(f"/simulations/{simulation.pk}/start").status_code == 200
    if ends == "finish":
        assert agent.post(f"/simulations/{simulation.pk}/finish").status_code == 200
    else:
        assert token_client(user).post(f"/simulations/{simulation.pk}/cancel").status_code == 200

    detail = agent.get(f"/simulations/{simulation.pk}")
    assert detail.status_code == 200 and "env" not in detail.json()
    listed = agent.get("/simulations/", {"machine": simulation.machine_id}).content.decode()
    assert "s3" not in listed


def test_env_never_reaches_the_simulation_socket(user):
    simulation, agent = _placed(user)
    token = _token(user)

    async def run():
        communicator = WebsocketCommunicator(
            application,
            f"/ws/convergence/{simulation.pk}",
            headers=[
                (b"authorization", f"Token {token}".encode()),
                (b"origin", b"http://localhost"),
            ],
        )
        connected, _ = await communicator.connect()
        assert connected
        snapshot = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return snapshot

    from asgiref.sync import async_to_sync

    snapshot = async_to_sync(run)()
    assert "s3" not in str(snapshot) and "env" not in snapshot["simulation"]


def _token(user) -> str:
    from rest_framework.authtoken.models import Token

    return Token.objects.get_or_create(user=user)[0].key


@pytest.mark.parametrize(
    "field, value",
    [
        ("command", "python train.py"),
        ("command", ["python", 3]),
        ("command", ["a\x00b"]),
        ("command", ["\ud800"]),
        ("command", ["x"] * 257),
        ("env", ["A", "B"]),
        ("env", {"1BAD": "x"}),
        ("env", {"A-B": "x"}),
        ("env", {"SIMSCHED_TOKEN": "stolen"}),
        ("env", {"A": 1}),
        ("env", {"A": "\ud800"}),
        ("env", {"": "x"}),
        ("working_dir", "/a\x00"),
        ("working_dir", "x" * 1001),
    ],
)
def test_bad_launch_fields_are_a_400_and_nothing_is_stored(api, field, value):
    body = json.dumps({"name": "bad", field: value})  # escapes a lone surrogate, as clients do
    response = api.post("/simulations/", body, content_type="application/json")
    assert_error(response, 400)
    assert not api.get("/simulations/").json()["results"]


def test_what_it_runs_changes_only_while_pending(user, api):
    simulation, _ = _placed(user)
    response = api.patch(f"/simulations/{simulation.pk}", {"command": ["rm", "-rf"]}, format="json")
    assert_error(response, 409)
    assert api.get(f"/simulations/{simulation.pk}").json()["command"] == ["true"]
    pending = make_simulation(owner=user, required_gpus=10_000)
    changed = api.patch(
        f"/simulations/{pending.pk}", {"command": ["echo"], "env": {"A": "1"}}, format="json"
    )
    assert changed.status_code == 200
    assert changed.json()["command"] == ["echo"] and changed.json()["env"] == {"A": "1"}


# --- log lines ----------------------------------------------------------------------------------


def test_the_agent_ships_lines_and_readers_page_them_with_since(user, api):
    simulation, agent = _placed(user)
    shipped = agent.post(f"/simulations/{simulation.pk}/logs", _lines(0, 30), format="json")
    assert shipped.json() == {"stored": 30, "duplicates": 0}
    first = api.get(f"/simulations/{simulation.pk}/logs", {"limit": 20}).json()
    assert [line["seq"] for line in first["lines"]] == list(range(20))
    assert first["has_more"] and first["next_since"] == 19
    rest = api.get(f"/simulations/{simulation.pk}/logs", {"since": 19}).json()
    assert [line["line"] for line in rest["lines"]] == [f"line {s}" for s in range(20, 30)]
    assert not rest["has_more"] and rest["next_since"] == 29
    empty = api.get(f"/simulations/{simulation.pk}/logs", {"since": 29}).json()
    assert empty["lines"] == [] and empty["next_since"] == 29 and empty["last_seq"] == 29


def test_resent_lines_are_stored_once(user):
    simulation, agent = _placed(user)
    agent.post(f"/simulations/{simulation.pk}/logs", _lines(0, 10), format="json")
    again = agent.post(f"/simulations/{simulation.pk}/logs", _lines(5, 10), format="json")
    assert again.json() == {"stored": 5, "duplicates": 5}
    assert LogLine.objects.filter(simulation=simulation).count() == 15


@override_settings(SIMSCHED_LOG_LINES=50)
def test_only_the_last_n_lines_are_kept(user, api):
    simulation, agent = _placed(user)
    for first in range(0, 120, 40):
        agent.post(f"/simulations/{simulation.pk}/logs", _lines(first, 40), format="json")
    kept = api.get(f"/simulations/{simulation.pk}/logs", {"limit": 5000}).json()["lines"]
    assert [line["seq"] for line in kept] == list(range(70, 120))


def test_nul_and_broken_text_in_a_line_are_stored_replaced(user, api):
    simulation, agent = _placed(user)
    body = json.dumps({"lines": [{"seq": 0, "stream": "stderr", "line": "bad\x00byte \ud800 end"}]})
    response = agent.post(
        f"/simulations/{simulation.pk}/logs", body, content_type="application/json"
    )
    assert response.status_code == 200
    (line,) = api.get(f"/simulations/{simulation.pk}/logs").json()["lines"]
    assert line["stream"] == "stderr" and line["line"].startswith("bad\ufffdbyte")


def test_only_the_agent_of_the_machine_ships_lines(user, api, staff_api):
    simulation, _ = _placed(user)
    other_agent = agent_client(make_machine())
    url = f"/simulations/{simulation.pk}/logs"
    for client in (api, staff_api, other_agent):
        assert_error(client.post(url, _lines(0, 1), format="json"), 403)
    assert not LogLine.objects.exists()


def test_logs_are_hidden_from_agents_of_other_machines_and_from_anonymous(user, anon_api):
    simulation, agent = _placed(user)
    agent.post(f"/simulations/{simulation.pk}/logs", _lines(0, 3), format="json")
    other_agent = agent_client(make_machine())
    assert_error(other_agent.get(f"/simulations/{simulation.pk}/logs"), 403)
    assert anon_api.get(f"/simulations/{simulation.pk}/logs").status_code == 401
    assert agent.get(f"/simulations/{simulation.pk}/logs").status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"lines": []},
        {"lines": "x"},
        {"lines": [{"seq": -1, "stream": "stdout", "line": "x"}]},
        {"lines": [{"seq": 2**60, "stream": "stdout", "line": "x"}]},
        {"lines": [{"seq": 1, "stream": "stdin", "line": "x"}]},
        {"lines": [{"seq": 1, "stream": "stdout", "line": 5}]},
        {"lines": [{"seq": 1, "stream": "stdout", "line": "x" * 16_385}]},
        {"lines": [{"seq": s, "stream": "stdout", "line": ""} for s in range(1001)]},
        {"lines": [7]},
    ],
)
def test_bad_log_batches_are_a_400_and_store_nothing(user, body):
    simulation, agent = _placed(user)
    assert_error(agent.post(f"/simulations/{simulation.pk}/logs", body, format="json"), 400)
    assert not LogLine.objects.exists()


@pytest.mark.parametrize("query", [{"since": "x"}, {"since": -2}, {"limit": 0}, {"limit": 5001}])
def test_bad_log_queries_are_a_400(user, api, query):
    simulation, _ = _placed(user)
    assert_error(api.get(f"/simulations/{simulation.pk}/logs", query), 400)


def test_unknown_simulation_logs_are_a_404(api):
    assert_error(api.get("/simulations/999999/logs"), 404)


@pytest.mark.django_db(transaction=True)
async def test_new_lines_are_pushed_on_the_simulation_socket(user):
    from channels.db import database_sync_to_async

    simulation, agent = await database_sync_to_async(_placed)(user)
    communicator = WebsocketCommunicator(
        application,
        f"/ws/convergence/{simulation.pk}",
        headers=[
            (b"authorization", f"Token {await database_sync_to_async(_token)(user)}".encode()),
            (b"origin", b"http://localhost"),
        ],
    )
    assert (await communicator.connect())[0]
    assert (await communicator.receive_json_from(timeout=5))["type"] == "snapshot"
    await database_sync_to_async(agent.post)(
        f"/simulations/{simulation.pk}/logs", _lines(0, 2, "stderr"), format="json"
    )
    message = await communicator.receive_json_from(timeout=5)
    await communicator.disconnect()
    assert message["type"] == "logs" and message["last_seq"] == 1 and not message["truncated"]
    assert [(line["seq"], line["stream"]) for line in message["lines"]] == [
        (0, "stderr"),
        (1, "stderr"),
    ]


@pytest.mark.django_db(transaction=True)
async def test_log_lines_reach_no_socket_of_another_machines_agent(user):
    """The same rule as GET /simulations/{id}/logs (a 403 for that agent), on the socket."""
    from channels.db import database_sync_to_async

    from machines.services import machine_agent_user

    def setup():
        simulation, agent = _placed(user)
        return simulation, agent, _token(machine_agent_user(machine=make_machine()))

    simulation, agent, other_token = await database_sync_to_async(setup)()
    watchers = {}
    for name, token in (
        ("owner", await database_sync_to_async(_token)(user)),
        ("other agent", other_token),
    ):
        communicator = WebsocketCommunicator(
            application,
            f"/ws/convergence/{simulation.pk}",
            headers=[(b"authorization", f"Token {token}".encode())],
        )
        assert (await communicator.connect())[0]
        assert (await communicator.receive_json_from(timeout=5))["type"] == "snapshot"
        watchers[name] = communicator
    secret = {"lines": [{"seq": 0, "stream": "stderr", "line": "export HF_TOKEN=hf_x"}]}
    await database_sync_to_async(agent.post)(
        f"/simulations/{simulation.pk}/logs", secret, format="json"
    )

    owner_sees = await watchers["owner"].receive_json_from(timeout=5)
    assert owner_sees["type"] == "logs" and owner_sees["lines"][0]["line"].endswith("hf_x")
    assert await watchers["other agent"].receive_nothing(timeout=0.5)
    for communicator in watchers.values():
        await communicator.disconnect()


def test_the_agent_finds_the_simulation_its_machine_holds(user):
    simulation, agent = _placed(user)
    current = agent.get("/agent/current")
    assert current.status_code == 200 and current.json()["id"] == simulation.pk
    assert agent_client(make_machine()).get("/agent/current").status_code == 204
