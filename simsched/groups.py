"""Socket groups joined once per server process instead of once per socket.

With plain Channels groups every socket is a member in the channel layer: a point broadcast to a
simulation watched by 100 sockets is stored 100 times in Redis, and the server process pops it
100 times, one round trip each, before the last frame goes out. Here a process joins each group
once, with one channel of its own, and hands every message to the local sockets watching that
group, calling the same handlers Channels would (`convergence.points` → `convergence_points`).
bench/ws_latency.py measures the difference.

Messages carry their group's name (`simsched.broadcast` adds it). If the channel layer fails
(Redis down), every local socket is closed with 1011, so its client reconnects and backfills
what it missed from the stream endpoint.
"""

import asyncio
import logging
import time
import weakref

from channels.consumer import get_handler_name
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.conf import settings

logger = logging.getLogger(__name__)

CLOSE_LAYER_FAILED = 1011
# channels_redis forgets a group member after a day (group_expiry); rejoin well before that.
REJOIN_SECONDS = 3600


class LocalGroups:
    """The group memberships of the sockets served by one event loop."""

    def __init__(self, layer):
        self.layer = layer
        self.members: dict[str, set] = {}
        self.lock = asyncio.Lock()  # joins and leaves, so a socket never outruns its join
        self.channel: str | None = None
        self.tasks: list[asyncio.Task] = []

    async def add(self, group: str, consumer) -> bool:
        """Deliver the group's messages to `consumer` from now on. If the channel layer fails,
        close the socket with 1011 instead (its client retries) and return False."""
        try:
            async with self.lock:
                if self.channel is None:
                    # The default prefix: channels_redis reads every process-local channel of a
                    # process from one Redis key, whose name it derives from this prefix.
                    self.channel = await self.layer.new_channel()
                    self.tasks = [
                        asyncio.create_task(self._deliver(self.channel)),
                        asyncio.create_task(self._rejoin()),
                    ]
                if group not in self.members:
                    await self.layer.group_add(group, self.channel)
                    self.members[group] = set()
                self.members[group].add(consumer)
        except Exception as exc:  # noqa: BLE001 - the channel layer is down
            logger.warning("socket refused, channel layer down: %r", exc)
            await consumer.close(code=CLOSE_LAYER_FAILED)
            return False
        return True

    async def discard(self, group: str, consumer) -> None:
        async with self.lock:
            members = self.members.get(group)
            if members is None or consumer not in members:
                return
            members.discard(consumer)
            if members:
                return
            del self.members[group]
            channel = self.channel
            if not self.members:
                self._stop()
            try:
                await self.layer.group_discard(group, channel)
            except Exception as exc:  # noqa: BLE001 - the membership expires on its own
                logger.warning("leaving group %s failed: %r", group, exc)

    async def _deliver(self, channel: str) -> None:
        while True:
            try:
                message = await self.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any layer failure ends every socket
                logger.warning("channel layer receive failed, closing sockets: %r", exc)
                await self._close_all()
                return
            for consumer in list(self.members.get(message.get("group"), ())):
                try:
                    await getattr(consumer, get_handler_name(message))(message)
                except Exception:
                    logger.exception("delivering %s failed", message.get("type"))

    async def _rejoin(self) -> None:
        while True:
            await asyncio.sleep(REJOIN_SECONDS)
            async with self.lock:
                try:
                    for group in self.members:
                        await self.layer.group_add(group, self.channel)
                except Exception as exc:  # noqa: BLE001 - the receive loop reports outages
                    logger.warning("rejoining groups failed: %r", exc)

    async def _close_all(self) -> None:
        async with self.lock:
            consumers = {consumer for group in self.members.values() for consumer in group}
            self.members = {}
            self._stop()
        for consumer in consumers:
            await consumer.close(code=CLOSE_LAYER_FAILED)

    def _stop(self) -> None:
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        self.tasks = []
        self.channel = None


async def group_has_members(layer, group: str) -> bool:
    """Does any process watch `group`? Exact, because the group's members are these processes'
    memberships: a socket joins before it reads its snapshot, so a write committed before this
    answered no is in that snapshot. One EXISTS on the group's key in Redis, where channels_redis
    makes two round trips and a Lua call to send to a group, even an empty one (most simulations'
    points are written while nobody watches). Members of a process that died without leaving
    count until channels_redis expires them (a day): then the broadcast is sent, as before."""
    if isinstance(layer, RedisChannelLayer):
        connection = layer.connection(layer.consistent_hash(group))
        return bool(await connection.exists(layer._group_key(group)))
    if isinstance(layer, InMemoryChannelLayer):
        return bool(layer.groups.get(group))
    return True


class RecentMemberships:
    """Per process: whether a group has members anywhere, as the channel layer said at most
    `seconds` ago. For the point broadcasts only, which are most of a server's Redis round trips
    (one per point written): a socket that joins a group may miss the points of writers still
    holding an older "nobody" answer, so `ConvergenceConsumer` catches up on them from the
    database once that answer has expired (`catch_up_after`). Only the Redis layer is asked
    through it: the in-memory layer's answer is exact and costs nothing."""

    MAX_GROUPS = 10_000

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.answers: dict[str, tuple[bool, float]] = {}

    def enabled(self, layer) -> bool:
        return self.seconds > 0 and isinstance(layer, RedisChannelLayer)

    def known(self, group: str) -> bool | None:
        """The remembered answer, None if there is none still valid (any thread may ask)."""
        answer = self.answers.get(group)
        if answer is None or answer[1] <= time.monotonic():
            return None
        return answer[0]

    async def has_members(self, layer, group: str) -> bool:
        answer = self.known(group)
        if answer is None:
            answer = await group_has_members(layer, group)
            if len(self.answers) >= self.MAX_GROUPS:
                self.answers.clear()
            self.answers[group] = (answer, time.monotonic() + self.seconds)
        return answer

    def catch_up_after(self) -> float:
        """How long after joining a socket reads what the stale answers skipped."""
        return self.seconds + CATCH_UP_MARGIN_SECONDS


CATCH_UP_MARGIN_SECONDS = 0.5
recent_memberships = RecentMemberships(settings.SIMSCHED_MEMBERSHIP_CACHE_SECONDS)


_by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LocalGroups]" = (
    weakref.WeakKeyDictionary()
)


def local_groups() -> LocalGroups:
    """The running event loop's groups (one per server process; one per test)."""
    loop = asyncio.get_running_loop()
    groups = _by_loop.get(loop)
    if groups is None:
        groups = _by_loop[loop] = LocalGroups(get_channel_layer())
    return groups
