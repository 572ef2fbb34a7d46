"""Live convergence: how long from POSTing a point until every open socket has it.

Opens N sockets to WS /ws/convergence/{id} on the real server (daphne, PostgreSQL + Redis
channel layer), POSTs single points one after another over a keep-alive connection, and times
each point from the start of its POST until it has arrived on every socket.

    .venv/bin/python bench/ws_latency.py [--posts 300] [--sockets 1 100]
"""

import argparse
import asyncio
import json
import statistics
import sys
import time

import common
from websockets.asyncio.client import connect

ARRIVAL_TIMEOUT = 10.0


class Fanout:
    """Counts, per step, on how many sockets the point has arrived."""

    def __init__(self, sockets: int):
        self.sockets = sockets
        self.arrived: dict[int, int] = {}
        self.done: dict[int, asyncio.Event] = {}
        self.done_at: dict[int, float] = {}

    def expect(self, step: int) -> asyncio.Event:
        self.arrived[step] = 0
        self.done[step] = asyncio.Event()
        return self.done[step]

    def saw(self, step: int) -> None:
        if step not in self.arrived:
            return
        self.arrived[step] += 1
        if self.arrived[step] == self.sockets:
            self.done_at[step] = time.perf_counter()
            self.done[step].set()


async def reader(ws, fanout: Fanout) -> None:
    async for raw in ws:
        message = json.loads(raw)
        if message.get("type") == "points":
            for point in message["points"]:
                fanout.saw(point["step"])


async def open_sockets(port: int, token: str, simulation_id: int, count: int) -> list:
    url = f"ws://{common.HOST}:{port}/ws/convergence/{simulation_id}?token={token}"
    sockets = []
    for start in range(0, count, 10):
        batch = await asyncio.gather(
            *(connect(url, max_size=2**24) for _ in range(start, min(start + 10, count)))
        )
        for ws in batch:
            snapshot = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if snapshot["type"] != "snapshot":
                raise RuntimeError(f"expected a snapshot, got {snapshot['type']}")
        sockets += batch
    return sockets


async def measure(ports, token, simulation_id, sockets_count, posts, first_step) -> dict:
    """Sockets are spread round-robin over the servers on `ports`; posts go to the first."""
    shares = [
        sockets_count // len(ports) + (i < sockets_count % len(ports)) for i in range(len(ports))
    ]
    sockets = []
    for server_port, share in zip(ports, shares, strict=True):
        sockets += await open_sockets(server_port, token, simulation_id, share)
    port = ports[0]
    fanout = Fanout(sockets_count)
    readers = [asyncio.create_task(reader(ws, fanout)) for ws in sockets]
    client = common.Client(port, token)
    loop = asyncio.get_running_loop()
    totals, post_times = [], []
    deadline = time.monotonic() + 300
    try:
        for step in range(first_step, first_step + posts):
            if time.monotonic() > deadline:
                break
            done = fanout.expect(step)
            body = {"simulation_id": simulation_id, "step": step, "loss_value": 1.0 / (step + 1)}
            started = time.perf_counter()
            await loop.run_in_executor(None, client.json, "POST", "/convergence/data", body)
            post_times.append(time.perf_counter() - started)
            await asyncio.wait_for(done.wait(), ARRIVAL_TIMEOUT)
            totals.append(fanout.done_at[step] - started)
            await asyncio.sleep(0.005)
    finally:
        client.close()
        for task in readers:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return {
        "summary": common.summary_ms(totals),
        "p50": statistics.median(totals) * 1000,
        "p99": common.percentile(totals, 99) * 1000,
        "post": common.summary_ms(post_times),
        "n": len(totals),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--posts", type=int, default=300)
    parser.add_argument("--sockets", type=int, nargs="+", default=[1, 100])
    parser.add_argument(
        "--servers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="daphne processes sharing Redis, sockets spread over them (one row each)",
    )
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()

    common.fresh_database()
    common.django_setup()
    token, (simulation_id,) = common.make_fixtures(simulations=1)
    results = {}
    peak = 0.0
    for servers_count in args.servers:
        servers = [common.Server() for _ in range(servers_count)]
        try:
            for server in servers:
                server.reset_peak()
            for index, count in enumerate(args.sockets):
                first = (servers_count * 10 + index) * 100_000
                ports = [server.port for server in servers]
                result = asyncio.run(measure(ports, token, simulation_id, count, args.posts, first))
                results[(servers_count, count)] = result
                print(
                    f"{servers_count} server(s), {count} socket(s): {result['summary']}; "
                    f"POST alone {result['post']}"
                )
            peak = max([peak, *(server.peak_memory_mib() for server in servers)])
        finally:
            for server in servers:
                server.stop()
    common.drop_database()
    lines = [
        "| daphne processes | sockets | POST start → point on every socket | the POST alone |",
        "| --- | --- | --- | --- |",
        *(
            f"| {servers} | {count} | **{r['summary']}** | {r['post']} |"
            for (servers, count), r in results.items()
        ),
        "",
        "Target: p99 < 50 ms with 100 sockets on one machine. With 2 processes the sockets are",
        "spread over both (as behind a load balancer) and they share Redis; posts go to the first.",
        "",
        f"Posts are sequential single points (POST /convergence/data) over one keep-alive "
        f"connection, {args.posts} per row; channel layer: Redis. "
        f"Peak server memory (VmHWM, per process): {peak:.0f} MiB.",
    ]
    if not args.no_results:
        common.write_section(
            "ws_latency",
            "Live convergence socket latency (bench/ws_latency.py)",
            "cd /work/main && .venv/bin/python bench/ws_latency.py",
            "\n".join(lines),
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
