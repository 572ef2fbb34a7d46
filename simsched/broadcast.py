"""The one way to push an event to WebSocket viewers: after the transaction commits.

A failed broadcast (Redis down) is logged and never fails the write: the data is stored and
clients backfill from the stream endpoint when they reconnect.

Inside the server (`DeferredBroadcasts` wraps the ASGI application) a request hands its
broadcasts to the event loop, which sends them in order while the response goes out: the request
does not wait for the channel layer. Elsewhere (management commands, tests) `broadcast` sends
before the commit returns. A group nobody watches costs one Redis round trip, not a send.
"""

import asyncio
import logging
import threading
import weakref
from contextlib import contextmanager
from contextvars import Context, ContextVar

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from simsched.groups import group_has_members, recent_memberships
from simsched.observability.metrics import BROADCAST_FAILURES, BROADCASTS_DROPPED

logger = logging.getLogger(__name__)

SEND_TIMEOUT_SECONDS = 2.0
# Broadcasts a server process holds while the channel layer is slow or down. Beyond it new ones
# are dropped: the points are stored, and sockets are closed and backfill when the layer fails.
MAX_QUEUED_BROADCASTS = 10_000
FLEET_GROUP = "fleet"


def simulation_group(simulation_id: int) -> str:
    return f"simulation.{simulation_id}"


def broadcast(group: str, message: dict, *, recent_members: bool = False) -> None:
    """Send `message` to `group` once the current transaction (if any) has committed.

    `recent_members`: whether the group has members may be known from an answer up to
    SIMSCHED_MEMBERSHIP_CACHE_SECONDS old (`simsched.groups.RecentMemberships`), for messages
    whose receivers catch up on what that skips (points)."""
    message = {**message, "group": group}  # simsched.groups delivers by it
    transaction.on_commit(lambda: send_now(group, message, recent_members=recent_members))


def send_now(group: str, message: dict, *, recent_members: bool = False) -> None:
    if recent_members and recent_memberships.known(group) is False:
        return  # nobody watched a moment ago: not even a wake-up of the event loop
    sender = _loop_sender.get()
    if sender is not None and sender.submit(group, message, recent_members):
        return
    async_to_sync(_send_logged)(group, message, recent_members)


async def _send_logged(group: str, message: dict, recent_members: bool = False) -> None:
    try:
        await _group_send(group, message, recent_members)
    except Exception as exc:  # noqa: BLE001 - any layer failure must not fail the write
        BROADCAST_FAILURES.inc()
        logger.warning("broadcast to %s failed: %r", group, exc)


async def _group_send(group: str, message: dict, recent_members: bool) -> None:
    layer = get_channel_layer()
    async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
        if recent_members and recent_memberships.enabled(layer):
            watched = await recent_memberships.has_members(layer, group)
        else:
            watched = await group_has_members(layer, group)
        if watched:
            await layer.group_send(group, message)


class LoopSender:
    """Sends broadcasts handed over from any thread, one after another, on its event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, limit: int = MAX_QUEUED_BROADCASTS):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=limit)
        self.dropped = 0
        self.task: asyncio.Task | None = None
        self.context = Context()  # not the request's: the sends outlive it

    def submit(self, group: str, message: dict, recent_members: bool = False) -> bool:
        """Queue a broadcast; False if the loop has closed (the caller sends it itself)."""
        try:
            self.loop.call_soon_threadsafe(
                self._enqueue, group, message, recent_members, context=self.context
            )
        except RuntimeError:
            return False
        return True

    def _enqueue(self, group: str, message: dict, recent_members: bool) -> None:
        try:
            self.queue.put_nowait((group, message, recent_members))
        except asyncio.QueueFull:
            if self.dropped == 0:
                logger.warning("channel layer backlog full, dropping broadcasts")
            self.dropped += 1
            BROADCASTS_DROPPED.inc()
            return
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self._drain())

    async def flush(self) -> None:
        """Wait until everything handed over before this call has been sent."""
        while self.task is not None and not self.task.done():
            await self.task

    async def _drain(self) -> None:
        while not self.queue.empty():
            await _send_logged(*self.queue.get_nowait())
        if self.dropped:
            logger.warning("channel layer backlog cleared; %d broadcasts dropped", self.dropped)
            self.dropped = 0


_loop_sender: ContextVar[LoopSender | None] = ContextVar("simsched_loop_sender", default=None)
_senders: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopSender]" = (
    weakref.WeakKeyDictionary()
)


class DeferredBroadcasts:
    """ASGI middleware: broadcasts made while handling a connection go through the loop."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        loop = asyncio.get_running_loop()
        sender = _senders.get(loop)
        if sender is None:
            sender = _senders[loop] = LoopSender(loop)
        token = _loop_sender.set(sender)
        try:
            return await self.app(scope, receive, send)
        finally:
            _loop_sender.reset(token)


@contextmanager
def sent_in_the_background():
    """For long-running management commands: broadcasts go out from one event loop on a thread
    of its own, in order and over one channel-layer connection, and the command does not wait
    for them. All of them have been sent when the block ends."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="simsched-broadcasts", daemon=True)
    thread.start()
    sender = LoopSender(loop)
    token = _loop_sender.set(sender)
    try:
        yield
    finally:
        _loop_sender.reset(token)
        try:
            asyncio.run_coroutine_threadsafe(sender.flush(), loop).result(SEND_TIMEOUT_SECONDS * 5)
        except TimeoutError:
            logger.warning(
                "%d broadcasts not sent: the channel layer is too slow", sender.queue.qsize()
            )
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
