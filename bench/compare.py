"""`GET /convergence/compare` of 10 runs x 1,000,000 points (one metric, max_points=1000),
optionally side by side with another checkout (`--baseline DIR`): both servers (uvicorn, one
worker) read the same runs, in alternating rounds with the same client. Writes its section of
bench/RESULTS.md.

    .venv/bin/python bench/compare.py [--runs 10] [--points 1000000] [--baseline DIR]
"""

import argparse
import statistics
import time
from pathlib import Path

import common
from ingest import load_big

UVICORN = str(common.ROOT / ".venv" / "bin" / "uvicorn")
ARGV = [UVICORN, "--host", common.HOST, "--port", "{port}", "--no-access-log", "--lifespan",
        "off", "--loop", "uvloop", "--http", "httptools", "simsched.asgi:application"]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--baseline", metavar="DIR")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()

    common.fresh_database()
    common.django_setup()
    token, sims = common.make_fixtures(simulations=args.runs)
    started = time.perf_counter()
    for sim in sims:
        load_big(sim, args.points)
    print(f"loaded {args.runs} x {args.points:,} in {time.perf_counter() - started:.0f} s")
    path = (
        f"/convergence/compare?simulations={','.join(map(str, sims))}&metric=loss&max_points=1000"
    )
    trees = {"this": common.ROOT}
    if args.baseline:
        trees["baseline"] = Path(args.baseline).resolve()
    servers, latencies = {}, {name: [] for name in trees}
    try:
        for name, tree in trees.items():
            servers[name] = common.Server(
                argv=ARGV, cwd=tree, PYTHONPATH=f"{common.ROOT / 'bench'}:{tree}"
            )
        for server in servers.values():  # warm up
            common.Client(server.port, token).request("GET", path)
        for round_index in range(args.rounds):
            for name in list(trees)[round_index % 2 :] + list(trees)[: round_index % 2]:
                client = common.Client(servers[name].port, token)  # idle keep-alives close
                client.request("GET", path)  # the connection, untimed
                for _ in range(10):
                    t0 = time.perf_counter()
                    status, data = client.request("GET", path)
                    latencies[name].append(time.perf_counter() - t0)
                    assert status == 200, data[:200]
                client.close()
            print(f"round {round_index + 1}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
        common.drop_database()

    lines = ["| server | p50 | p99 | n |", "| --- | --- | --- | --- |"]
    for name, values in latencies.items():
        p50, p99 = statistics.median(values) * 1000, common.percentile(values, 99) * 1000
        lines.append(f"| {name} | **{p50:.1f} ms** | {p99:.1f} ms | {len(values)} |")
    if args.baseline:
        ratio = statistics.median(latencies["baseline"]) / statistics.median(latencies["this"])
        lines.append("")
        lines.append(f"baseline p50 / this p50: **{ratio:.2f}×**")
    lines.append("")
    lines.append(
        f"{args.runs} runs x {args.points:,} points generated inside PostgreSQL; "
        f"{args.rounds} rounds of 10 requests per server, the order alternating; uvicorn, one "
        "worker each; target p50 < 150 ms."
    )
    print("\n".join(lines))
    if not args.no_results:
        common.write_section(
            "compare",
            "Comparing 10 runs (bench/compare.py)",
            "cd /work/main && .venv/bin/python bench/compare.py --baseline DIR",
            "\n".join(lines),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
