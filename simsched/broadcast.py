"""The one way to push an event to WebSocket viewers: after the transaction commits.

A failed broadcast (Redis down) is logged and never fails the write: the data is stored and
clients backfill from the stream endpoint when they reconnect.
"""

import asyncio
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

SEND_TIMEOUT_SECONDS = 2.0
FLEET_GROUP = "fleet"


def simulation_group(simulation_id: int) -> str:
    return f"simulation.{simulation_id}"


def broadcast(group: str, message: dict) -> None:
    """Send `message` to `group` once the current transaction (if any) has committed."""
    transaction.on_commit(lambda: send_now(group, message))


def send_now(group: str, message: dict) -> bool:
    try:
        async_to_sync(_group_send)(group, message)
    except Exception as exc:  # noqa: BLE001 - any layer failure must not fail the write
        logger.warning("broadcast to %s failed: %r", group, exc)
        return False
    return True


async def _group_send(group: str, message: dict) -> None:
    layer = get_channel_layer()
    await asyncio.wait_for(layer.group_send(group, message), SEND_TIMEOUT_SECONDS)
