"""Nothing lost when things break: agents stream points while Redis is restarted.

Starts its own redis-server (127.0.0.1, a spare port, no persistence) and a daphne on it.
Several agent threads each send tens of thousands of points in batches of a few hundred,
re-sending earlier batches now and then as if a response had timed out. One socket per
simulation records what it receives; on a disconnect or a gap it reconnects / backfills from
GET /convergence/{id}/stream?since_step=N. Redis is stopped and restarted in the middle.

At the end: the stored count equals the distinct points sent, exactly, and every socket's
received + backfilled step set equals the stored set.

    .venv/bin/python bench/soak.py [--agents 4] [--points 30000] [--redis-port 6390]
"""

import argparse
import asyncio
import json
import random
import sys
import threading
import time

import common
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.servers import Redis

RUN_SECONDS = 600
RESEND_PROBABILITY = 0.15


class Agent(threading.Thread):
    """Sends steps 0..points-1 for one simulation in batches of a few hundred, sometimes
    re-sending an earlier batch; a failed request is retried on a new connection."""

    def __init__(self, port, token, simulation_id, points, seed):
        super().__init__(daemon=True)
        self.port, self.token, self.simulation_id = port, token, simulation_id
        self.points, self.rng = points, random.Random(seed)
        self.sent_steps: set[int] = set()
        self.requests = self.resends = self.retries = self.stored = self.duplicates = 0
        self.error: BaseException | None = None
        self.progress = 0

    def _post(self, client, batch) -> common.Client:
        path = f"/convergence/{self.simulation_id}/points"
        for _attempt in range(20):
            try:
                result = client.json("POST", path, {"points": batch})
                self.requests += 1
                self.stored += result["stored"]
                self.duplicates += result["duplicates"]
                return client
            except (OSError, RuntimeError, ValueError):
                self.retries += 1
                client.close()
                time.sleep(0.2)
                client = common.Client(self.port, self.token, timeout=30)
        raise RuntimeError("a batch failed 20 times")

    def run(self) -> None:
        try:
            client = common.Client(self.port, self.token, timeout=30)
            batches, step, deadline = [], 0, time.monotonic() + RUN_SECONDS
            while step < self.points and time.monotonic() < deadline:
                size = min(self.rng.randint(200, 500), self.points - step)
                batch = [
                    {"step": s, "loss_value": 2.0 / (1 + s / 1000) + (s % 7) * 1e-3}
                    for s in range(step, step + size)
                ]
                client = self._post(client, batch)
                batches.append(batch)
                self.sent_steps.update(range(step, step + size))
                step += size
                self.progress = step
                if self.rng.random() < RESEND_PROBABILITY:
                    client = self._post(client, self.rng.choice(batches))
                    self.resends += 1
            client.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc


class Watcher:
    """One socket on one simulation: live points, and backfill on (re)connect or a gap."""

    def __init__(self, port, token, simulation_id):
        self.port, self.token, self.simulation_id = port, token, simulation_id
        self.steps: set[int] = set()
        self.contiguous = -1  # every step up to here has been seen
        self.live = self.backfilled = self.connects = self.gaps = 0
        self.client = common.Client(port, token, timeout=30)

    def _advance(self) -> None:
        while self.contiguous + 1 in self.steps:
            self.contiguous += 1

    def backfill(self) -> None:
        for _page in range(1000):
            path = f"/convergence/{self.simulation_id}/stream?since_step={self.contiguous}"
            page = self.client.json("GET", path)
            new = {p["step"] for p in page["points"]} - self.steps
            self.backfilled += len(new)
            self.steps |= new
            self._advance()
            if not page["has_more"]:
                return

    async def run(self, stop: asyncio.Event) -> None:
        url = (
            f"ws://{common.HOST}:{self.port}/ws/convergence/{self.simulation_id}?token={self.token}"
        )
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                async with connect(url, max_size=2**24, open_timeout=10) as ws:
                    self.connects += 1
                    await asyncio.wait_for(ws.recv(), 10)  # the snapshot
                    await loop.run_in_executor(None, self.backfill)
                    while not stop.is_set():
                        try:
                            raw = await asyncio.wait_for(ws.recv(), 0.5)
                        except TimeoutError:
                            continue
                        message = json.loads(raw)
                        if message.get("type") != "points":
                            continue
                        steps = [p["step"] for p in message["points"]]
                        if min(steps) > self.contiguous + 1:
                            self.gaps += 1
                            await loop.run_in_executor(None, self.backfill)
                        new = set(steps) - self.steps
                        self.live += len(new)
                        self.steps |= new
                        self._advance()
            except (ConnectionClosed, OSError, InvalidStatus, TimeoutError):
                await asyncio.sleep(0.2)


def run_watchers(watchers, stop_flag: threading.Event, ready: threading.Event) -> None:
    async def main():
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w.run(stop)) for w in watchers]
        ready.set()
        while not stop_flag.is_set():
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def stored_steps(simulation_id: int) -> tuple[set[int], int]:
    import psycopg

    with psycopg.connect(common.DATABASE_URL) as conn:
        steps = {
            row[0]
            for row in conn.execute(
                "SELECT step FROM convergence_data WHERE simulation_id = %s", [simulation_id]
            )
        }
        rollup = conn.execute(
            "SELECT coalesce(sum(count), 0) FROM convergence_rollup "
            "WHERE simulation_id = %s AND level = 6",
            [simulation_id],
        ).fetchone()[0]
    return steps, rollup


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--points", type=int, default=30_000, help="per agent")
    parser.add_argument("--redis-port", type=int, default=6390)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()

    redis = Redis(args.redis_port).start()
    common.fresh_database()
    common.django_setup(redis_url=f"redis://127.0.0.1:{args.redis_port}/0")
    token, sims = common.make_fixtures(simulations=args.agents)
    total = args.agents * args.points
    try:
        with common.Server(redis_url=f"redis://127.0.0.1:{args.redis_port}/0") as server:
            server.reset_peak()
            watchers = [Watcher(server.port, token, sim) for sim in sims]
            stop_flag, ready = threading.Event(), threading.Event()
            watcher_thread = threading.Thread(
                target=run_watchers, args=(watchers, stop_flag, ready), daemon=True
            )
            watcher_thread.start()
            ready.wait(10)
            time.sleep(1.0)
            agents = [
                Agent(server.port, token, sim, args.points, seed) for seed, sim in enumerate(sims)
            ]
            started = time.perf_counter()
            for agent in agents:
                agent.start()
            restarted_at = None
            deadline = time.monotonic() + RUN_SECONDS
            while any(a.is_alive() for a in agents) and time.monotonic() < deadline:
                if restarted_at is None and sum(a.progress for a in agents) >= total * 0.4:
                    restarted_at = sum(a.progress for a in agents)
                    redis.stop()
                    print(f"redis stopped after {restarted_at:,} points", flush=True)
                    time.sleep(2.0)
                    redis.start()
                    print("redis restarted", flush=True)
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            for agent in agents:
                agent.join(5)
                if agent.error is not None:
                    raise agent.error
            time.sleep(2.0)  # the last broadcasts arrive
            stop_flag.set()
            watcher_thread.join(30)
            for watcher in watchers:
                watcher.backfill()  # what a client does on its next poll
            peak = server.peak_memory_mib()
    finally:
        redis.stop()

    rows, ok = [], True
    for agent, watcher in zip(agents, watchers, strict=True):
        steps, rollup_count = stored_steps(agent.simulation_id)
        exact = len(steps) == len(agent.sent_steps) and steps == agent.sent_steps
        gap_free = watcher.steps == steps
        ok = ok and exact and gap_free and rollup_count == len(steps)
        rows.append(
            f"| {agent.simulation_id} | {len(agent.sent_steps):,} | {len(steps):,} "
            f"| {rollup_count:,} | {agent.requests} ({agent.resends} re-sends, "
            f"{agent.retries} retries) | {agent.duplicates:,} "
            f"| {watcher.live:,} live + {watcher.backfilled:,} backfilled, "
            f"{watcher.connects} connects, {watcher.gaps} gaps "
            f"| {'yes' if exact and gap_free else 'NO'} |"
        )
    common.drop_database()
    sent = sum(len(a.sent_steps) for a in agents)
    lines = [
        f"Load held: **{sent / elapsed:,.0f} distinct points/s** ({sent:,} points, "
        f"{sum(a.requests for a in agents)} requests in {elapsed:.1f} s) from {args.agents} "
        f"agent threads; Redis stopped and restarted after {restarted_at or 0:,} points. "
        f"Peak server memory (VmHWM): {peak:.0f} MiB. Result: **{'PASS' if ok else 'FAIL'}**.",
        "",
        "| simulation | distinct sent | stored | rollup count | requests | duplicates "
        "| socket saw | exact and gap-free |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]
    if not args.no_results:
        common.write_section(
            "soak",
            "Nothing lost when Redis restarts (bench/soak.py)",
            "cd /work/main && .venv/bin/python bench/soak.py",
            "\n".join(lines),
        )
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
