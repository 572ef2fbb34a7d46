"""The server's own request path, in process: HTTP through `simsched.asgi.application` (reused
request threads, the synchronous middleware chain, broadcasts handed to the event loop) and
sockets sharing one channel-layer membership per group.

The other socket tests post through DRF's test client, outside the ASGI application; these post
through the application itself, as daphne does.
"""

import asyncio
import json

import pytest
from channels.layers import get_channel_layer
from channels.testing import HttpCommunicator, WebsocketCommunicator
from rest_framework.authtoken.models import Token

from convergence.models import ConvergencePoint
from simsched import groups
from simsched.asgi import application
from simsched.broadcast import simulation_group
from tests.convergence.test_consumers import TIMEOUT, db, open_viewer, untimed
from tests.factories import make_simulation

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def token(user):
    return Token.objects.get_or_create(user=user)[0].key


@pytest.fixture
def auth(token):
    return [(b"authorization", f"Token {token}".encode())]


@pytest.fixture
def simulation(user):
    return make_simulation(name="asgi-path", owner=user)


async def group_members(group: str) -> list[str]:
    """This process's members of the group, as the channel layer holds them (in memory, or in
    Redis, where other test runs may have left members of their own)."""
    layer = get_channel_layer()
    if hasattr(layer, "groups"):
        members = list(layer.groups.get(group, {}))
    else:
        key = layer._group_key(group)
        found = await layer.connection(layer.consistent_hash(group)).zrange(key, 0, -1)
        members = [member.decode() for member in found]
    process = (await layer.new_channel()).split("!")[0]
    return [member for member in members if member.startswith(process + "!")]


async def http_post(path: str, body: dict, token: str) -> tuple[int, dict]:
    payload = json.dumps(body).encode()
    communicator = HttpCommunicator(
        application,
        "POST",
        path,
        body=payload,
        headers=[
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"authorization", f"Token {token}".encode()),
        ],
    )
    response = await communicator.get_response(timeout=TIMEOUT)
    await communicator.wait(TIMEOUT)  # the request ends as under a server, not cancelled
    return response["status"], json.loads(response["body"])


async def test_points_posted_through_the_server_path_reach_a_socket_in_order(
    auth, token, simulation
):
    viewer, _ = await open_viewer(simulation.pk, auth)

    for step in range(20):
        status, body = await http_post(
            "/convergence/data",
            {"simulation_id": simulation.pk, "step": step, "loss_value": 1.0 / (step + 1)},
            token,
        )
        assert status == 201, body
        assert body["step"] == step

    received = []
    while len(received) < 20:
        message = await viewer.receive_json_from(timeout=TIMEOUT)
        received += [point["step"] for point in message["points"]]
    assert received == list(range(20))
    assert await db(ConvergencePoint.objects.filter(simulation=simulation).count) == 20
    await viewer.disconnect()


async def test_sockets_watching_one_simulation_share_one_group_membership(auth, token, simulation):
    viewers = [(await open_viewer(simulation.pk, auth))[0] for _ in range(3)]
    group = simulation_group(simulation.pk)
    assert len(await group_members(group)) == 1  # the process's one channel

    status, _ = await http_post(
        "/convergence/data", {"simulation_id": simulation.pk, "step": 0, "loss_value": 0.5}, token
    )
    assert status == 201
    for viewer in viewers:
        message = await viewer.receive_json_from(timeout=TIMEOUT)
        assert untimed(message["points"]) == [{"step": 0, "loss": 0.5, "metric": "loss"}]

    for viewer in viewers[:2]:
        await viewer.disconnect()
    assert len(await group_members(group)) == 1  # the last viewer still watches
    await viewers[2].disconnect()
    assert await group_members(group) == []


async def test_a_channel_layer_failure_closes_every_socket_with_1011(auth, simulation, monkeypatch):
    layer = get_channel_layer()
    outage = asyncio.Event()

    async def receive_until_the_outage(channel):
        await outage.wait()
        raise ConnectionError("channel layer down")

    monkeypatch.setattr(layer, "receive", receive_until_the_outage)
    viewers = [(await open_viewer(simulation.pk, auth))[0] for _ in range(2)]

    outage.set()

    for viewer in viewers:
        message = await viewer.receive_output(timeout=TIMEOUT)
        assert message["type"] == "websocket.close"
        assert message["code"] == groups.CLOSE_LAYER_FAILED
    assert groups.local_groups().members == {}  # the next socket joins afresh


async def test_a_socket_cannot_join_while_the_channel_layer_is_down(auth, simulation, monkeypatch):
    async def group_add_fails(group, channel):
        raise ConnectionError("channel layer down")

    monkeypatch.setattr(get_channel_layer(), "group_add", group_add_fails)
    communicator = WebsocketCommunicator(
        application, f"/ws/convergence/{simulation.pk}", headers=auth
    )
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected

    message = await communicator.receive_output(timeout=TIMEOUT)
    assert message["type"] == "websocket.close"
    assert message["code"] == groups.CLOSE_LAYER_FAILED


def record_group_sends(monkeypatch) -> list[str]:
    layer = get_channel_layer()
    sent_to: list[str] = []
    real_group_send = layer.group_send

    async def recording_group_send(group, message):
        sent_to.append(group)
        await real_group_send(group, message)

    monkeypatch.setattr(layer, "group_send", recording_group_send)
    return sent_to


async def test_a_point_nobody_watches_is_not_sent_to_the_channel_layer(
    auth, token, simulation, monkeypatch
):
    monkeypatch.setattr(groups.recent_memberships, "seconds", 0)  # ask for every point
    sent_to = record_group_sends(monkeypatch)
    group = simulation_group(simulation.pk)

    status, _ = await http_post(
        "/convergence/data", {"simulation_id": simulation.pk, "step": 0, "loss_value": 0.5}, token
    )
    assert status == 201
    assert group not in sent_to

    viewer, _ = await open_viewer(simulation.pk, auth)
    status, _ = await http_post(
        "/convergence/data", {"simulation_id": simulation.pk, "step": 1, "loss_value": 0.4}, token
    )
    assert status == 201
    message = await viewer.receive_json_from(timeout=TIMEOUT)
    assert untimed(message["points"]) == [{"step": 1, "loss": 0.4, "metric": "loss"}]
    assert sent_to.count(group) == 1
    await viewer.disconnect()


async def test_a_streamed_csv_export_goes_through_the_server_path_whole(token, simulation):
    for step in range(3):
        status, _ = await http_post(
            "/convergence/data",
            {"simulation_id": simulation.pk, "step": step, "loss_value": 0.5},
            token,
        )
        assert status == 201
    communicator = HttpCommunicator(
        application,
        "GET",
        f"/convergence/{simulation.pk}/data?format=csv",
        headers=[(b"host", b"testserver"), (b"authorization", f"Token {token}".encode())],
    )
    response = await communicator.get_response(timeout=TIMEOUT)
    await communicator.wait(TIMEOUT)
    assert response["status"] == 200
    rows = response["body"].decode().splitlines()
    assert rows[0] == "step,metric,value,timestamp"  # the whole run in long form
    assert [row.split(",")[0] for row in rows[1:]] == ["0", "1", "2"]


async def test_a_body_over_the_limit_is_a_413_through_the_server_path(token, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    status, body = await http_post(
        "/convergence/data", {"simulation_id": 1, "loss_value": 0.5, "pad": "x" * 200}, token
    )
    assert status == 413
    assert body["error"]["code"]


@pytest.mark.redis
async def test_a_viewer_gets_the_points_a_stale_nobody_watches_answer_skipped_once(
    auth, token, simulation, monkeypatch
):
    monkeypatch.setattr(groups.recent_memberships, "seconds", 0.5)
    sent_to = record_group_sends(monkeypatch)
    group = simulation_group(simulation.pk)
    for step in (0, 1):  # the first asks Redis, the second goes by its answer
        point = {"simulation_id": simulation.pk, "step": step, "loss_value": 0.5}
        assert (await http_post("/convergence/data", point, token))[0] == 201
    assert group not in sent_to

    viewer, snapshot = await open_viewer(simulation.pk, auth)
    assert [p["step"] for p in snapshot["points"]] == [0, 1]
    point = {"simulation_id": simulation.pk, "step": 2, "loss_value": 0.4}
    assert (await http_post("/convergence/data", point, token))[0] == 201
    assert group not in sent_to  # skipped on the remembered answer: nobody watched

    message = await viewer.receive_json_from(timeout=TIMEOUT)  # the catch-up
    assert untimed(message["points"]) == [{"step": 2, "loss": 0.4, "metric": "loss"}]

    point = {"simulation_id": simulation.pk, "step": 3, "loss_value": 0.3}
    assert (await http_post("/convergence/data", point, token))[0] == 201
    message = await viewer.receive_json_from(timeout=TIMEOUT)  # live: the answer expired
    assert untimed(message["points"]) == [{"step": 3, "loss": 0.3, "metric": "loss"}]
    assert sent_to.count(group) == 1
    assert await viewer.receive_nothing(timeout=1)  # each point once
    await viewer.disconnect()


@pytest.mark.redis
async def test_points_sent_live_while_catching_up_are_not_sent_again(
    auth, token, simulation, monkeypatch
):
    monkeypatch.setattr(groups.recent_memberships, "seconds", 0.5)
    viewer, _ = await open_viewer(simulation.pk, auth)
    point = {"simulation_id": simulation.pk, "step": 0, "loss_value": 0.5}
    assert (await http_post("/convergence/data", point, token))[0] == 201

    message = await viewer.receive_json_from(timeout=TIMEOUT)
    assert untimed(message["points"]) == [{"step": 0, "loss": 0.5, "metric": "loss"}]
    # The catch-up runs after 1 s and finds only step 0, already sent.
    assert await viewer.receive_nothing(timeout=2)
    await viewer.disconnect()
