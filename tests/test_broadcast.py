"""The server's broadcast queue: one event loop sends what request threads hand it, in order,
and holds a bounded backlog while the channel layer is slow or down."""

import asyncio

from simsched import broadcast


async def test_broadcasts_from_threads_are_sent_in_order_and_the_backlog_is_bounded(monkeypatch):
    sent: list[int] = []
    layer_back = asyncio.Event()

    async def slow_group_send(group, message, recent_members):
        await layer_back.wait()
        sent.append(message["n"])

    monkeypatch.setattr(broadcast, "_group_send", slow_group_send)
    sender = broadcast.LoopSender(asyncio.get_running_loop(), limit=5)

    def request_threads():
        return [sender.submit("simulation.1", {"n": n}) for n in range(8)]

    assert await asyncio.to_thread(request_threads) == [True] * 8
    await asyncio.sleep(0.05)  # the hand-overs run on the loop
    accepted = 8 - sender.dropped
    assert 5 <= accepted <= 6  # the queue, plus the one being sent when it filled

    layer_back.set()
    await asyncio.wait_for(sender.task, 5)

    assert sent == list(range(accepted))
    assert sender.dropped == 0  # counted again from the next backlog


async def test_a_failed_send_is_logged_and_the_next_one_still_goes(monkeypatch, caplog):
    sent: list[int] = []

    async def flaky_group_send(group, message, recent_members):
        if message["n"] == 0:
            raise ConnectionError("redis down")
        sent.append(message["n"])

    monkeypatch.setattr(broadcast, "_group_send", flaky_group_send)
    sender = broadcast.LoopSender(asyncio.get_running_loop())

    await asyncio.to_thread(lambda: [sender.submit("fleet", {"n": n}) for n in range(3)])
    await asyncio.sleep(0.05)
    await asyncio.wait_for(sender.task, 5)

    assert sent == [1, 2]
    assert "broadcast to fleet failed" in caplog.text
