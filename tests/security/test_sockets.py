"""Who may open which socket. Every test goes through `simsched.asgi.application`, so the
origin check and the session / token authentication run as they do in production."""

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from machines.services import machine_agent_user
from simsched.asgi import application
from tests.factories import make_machine, make_simulation, make_user
from tests.security.helpers import token_key

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 5
ALLOWED_ORIGIN = b"http://localhost:8000"


@database_sync_to_async
def _simulation(**fields):
    return make_simulation(**fields)


@database_sync_to_async
def _user(username, *, staff=False):
    return make_user(username, staff=staff)


@database_sync_to_async
def _key(user) -> str:
    return token_key(user)


@database_sync_to_async
def _session_cookie(user) -> bytes:
    client = Client()
    assert client.login(username=user.username, password="pw-123456")
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def _close_code(path: str, headers=()) -> int:
    """Connect and expect the server to close before sending any data; returns the code."""
    communicator = WebsocketCommunicator(application, path, headers=list(headers))
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    message = await communicator.receive_output(timeout=TIMEOUT)
    assert message["type"] == "websocket.close", message
    await communicator.wait()
    return message["code"]


async def _first_message(path: str, headers=()) -> dict:
    communicator = WebsocketCommunicator(application, path, headers=list(headers))
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    try:
        return await communicator.receive_json_from(timeout=TIMEOUT)
    finally:
        await communicator.disconnect()


def _token_header(key: str):
    return (b"authorization", f"Token {key}".encode())


# --- /ws/convergence/{id} ---------------------------------------------------------------------


async def test_a_convergence_socket_without_credentials_is_closed_with_4401():
    simulation = await _simulation()
    assert await _close_code(f"/ws/convergence/{simulation.pk}") == 4401


async def test_a_token_header_opens_the_convergence_socket():
    simulation = await _simulation()
    key = await _key(await _user("reader"))
    message = await _first_message(f"/ws/convergence/{simulation.pk}", headers=[_token_header(key)])
    assert message["type"] == "snapshot"
    assert message["simulation"]["id"] == simulation.pk


async def test_a_token_query_parameter_opens_the_convergence_socket():
    simulation = await _simulation()
    key = await _key(await _user("reader"))
    message = await _first_message(f"/ws/convergence/{simulation.pk}?token={key}")
    assert message["type"] == "snapshot"


@pytest.mark.parametrize("how", ["header", "query"])
async def test_a_bad_token_is_closed_with_4401(how):
    simulation = await _simulation()
    await _user("reader")
    path, headers = f"/ws/convergence/{simulation.pk}", []
    if how == "header":
        headers = [_token_header("not-a-real-token")]
    else:
        path += "?token=not-a-real-token"
    assert await _close_code(path, headers) == 4401


async def test_a_disallowed_origin_is_closed_with_4403_even_with_a_valid_session():
    simulation = await _simulation()
    cookie = await _session_cookie(await _user("browser"))
    headers = [(b"origin", b"http://evil.example"), (b"cookie", cookie)]
    assert await _close_code(f"/ws/convergence/{simulation.pk}", headers) == 4403


async def test_a_session_cookie_from_an_allowed_origin_opens_the_convergence_socket():
    simulation = await _simulation()
    cookie = await _session_cookie(await _user("browser"))
    headers = [(b"origin", ALLOWED_ORIGIN), (b"cookie", cookie)]
    message = await _first_message(f"/ws/convergence/{simulation.pk}", headers)
    assert message["type"] == "snapshot"


async def test_an_allowed_origin_without_a_session_is_closed_with_4401():
    simulation = await _simulation()
    headers = [(b"origin", ALLOWED_ORIGIN)]
    assert await _close_code(f"/ws/convergence/{simulation.pk}", headers) == 4401


async def test_an_unknown_simulation_is_closed_with_4404():
    key = await _key(await _user("reader"))
    assert await _close_code("/ws/convergence/999999", [_token_header(key)]) == 4404


# --- /ws/fleet --------------------------------------------------------------------------------


async def test_the_fleet_socket_without_credentials_is_closed_with_4401():
    assert await _close_code("/ws/fleet") == 4401


async def test_the_fleet_socket_refuses_a_bad_token_and_a_foreign_origin():
    await _user("reader")
    assert await _close_code("/ws/fleet?token=nope") == 4401
    assert await _close_code("/ws/fleet", [(b"origin", b"http://evil.example")]) == 4403


@pytest.mark.parametrize("how", ["header", "query", "session"])
async def test_the_fleet_socket_says_hello_to_signed_in_viewers(how):
    user = await _user("viewer")
    path, headers = "/ws/fleet", []
    if how == "header":
        headers = [_token_header(await _key(user))]
    elif how == "query":
        path += f"?token={await _key(user)}"
    else:
        headers = [(b"origin", ALLOWED_ORIGIN), (b"cookie", await _session_cookie(user))]
    assert await _first_message(path, headers) == {"type": "hello"}


# --- /ws/convergence/{id}/run -----------------------------------------------------------------


async def test_the_run_socket_without_credentials_is_closed_with_4401():
    simulation = await _simulation()
    assert await _close_code(f"/ws/convergence/{simulation.pk}/run") == 4401


async def test_the_run_socket_refuses_a_foreign_origin():
    simulation = await _simulation()
    headers = [(b"origin", b"http://evil.example")]
    assert await _close_code(f"/ws/convergence/{simulation.pk}/run", headers) == 4403


async def test_someone_elses_simulation_cannot_be_run_from_its_socket():
    owner, stranger = await _user("owner"), await _user("stranger")
    await database_sync_to_async(make_machine)()
    simulation = await _simulation(owner=owner)
    key = await _key(stranger)
    path = f"/ws/convergence/{simulation.pk}/run?token={key}"
    assert await _close_code(path) == 4403


async def test_an_agent_token_cannot_run_a_simulation_from_its_socket():
    machine = await database_sync_to_async(make_machine)()
    simulation = await _simulation()
    agent_key = await _key(await database_sync_to_async(machine_agent_user)(machine=machine))
    assert await _close_code(f"/ws/convergence/{simulation.pk}/run?token={agent_key}") == 4403


async def test_the_owner_can_run_their_simulation_from_its_socket():
    owner = await _user("owner")
    await database_sync_to_async(make_machine)()
    simulation = await _simulation(owner=owner)
    key = await _key(owner)
    path = f"/ws/convergence/{simulation.pk}/run?token={key}&rate=1"
    message = await _first_message(path)
    assert message == {"type": "run", "simulation_id": simulation.pk, "status": "running"}
