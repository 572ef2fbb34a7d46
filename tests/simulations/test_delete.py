"""Deleting a simulation: its viewers are told and their sockets closed with 4410 (gone)."""

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from rest_framework.authtoken.models import Token

from simsched.asgi import application
from simsched.socket_auth import CLOSE_GONE
from tests.factories import make_simulation, token_client

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 10


async def _viewer(simulation_id: int, user) -> WebsocketCommunicator:
    key = (await database_sync_to_async(Token.objects.get_or_create)(user=user))[0].key
    communicator = WebsocketCommunicator(
        application,
        f"/ws/convergence/{simulation_id}",
        headers=[(b"authorization", f"Token {key}".encode())],
    )
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    assert (await communicator.receive_json_from(timeout=TIMEOUT))["type"] == "snapshot"
    return communicator


async def test_deleting_a_simulation_closes_its_viewers_with_4410(api, user, other_user):
    simulation = await database_sync_to_async(make_simulation)(owner=user)
    kept = await database_sync_to_async(make_simulation)(owner=user)
    viewers = [await _viewer(simulation.pk, user), await _viewer(simulation.pk, other_user)]
    bystander = await _viewer(kept.pk, user)

    response = await database_sync_to_async(api.delete)(f"/simulations/{simulation.pk}")
    assert response.status_code == 204

    for viewer in viewers:
        told = await viewer.receive_json_from(timeout=TIMEOUT)
        assert told == {"type": "deleted", "simulation_id": simulation.pk}
        closed = await viewer.receive_output(timeout=TIMEOUT)
        assert closed == {"type": "websocket.close", "code": CLOSE_GONE}
    assert await bystander.receive_nothing(timeout=0.5)
    await bystander.disconnect()


async def test_a_refused_delete_closes_nothing(api, user, other_user):
    simulation = await database_sync_to_async(make_simulation)(owner=user)
    viewer = await _viewer(simulation.pk, user)

    other = await database_sync_to_async(token_client)(other_user)
    response = await database_sync_to_async(other.delete)(f"/simulations/{simulation.pk}")
    assert response.status_code == 403
    assert await viewer.receive_nothing(timeout=0.5)
    await viewer.disconnect()
