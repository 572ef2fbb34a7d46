"""The single-point hot path, side by side: simsched against the seed's API (bench/peer_seed,
FastAPI + SQLAlchemy on one uvicorn worker) on the same PostgreSQL.

Every server runs at once on its own port; the same keep-alive raw-socket client sends rounds of
500 `POST /convergence/data` to each in turn (the order rotates every round, so load from other
people on the machine weighs on all alike), for both bodies (the seed's, without step, and the
agent's, with step), from one client and from 8 concurrent ones. Each server's empty 200 (the
framework floor) is measured in the same rounds. Medians of the per-round rates, p50/p99 over
all rounds, and ratios; writes its section of bench/RESULTS.md.

    .venv/bin/python bench/hot_path.py [--rounds 5] [--servers daphne,uvicorn,uvicorn-2]
"""

import argparse
import json
import math
import statistics
import sys
import threading
import time
from pathlib import Path

import common

UVICORN = str(common.ROOT / ".venv" / "bin" / "uvicorn")
SERVE_HTTP = str(common.ROOT / "bin" / "serve-http")
PER_ROUND = 500
CLIENTS = 8
BENCH_PATH = f"{common.ROOT / 'bench'}:{common.ROOT}"
FLOOR_ENV = {"DJANGO_SETTINGS_MODULE": "floor_settings", "PYTHONPATH": BENCH_PATH}


def _uvicorn(app: str, workers: int) -> list[str]:
    return [
        UVICORN, "--host", common.HOST, "--port", "{port}", "--no-access-log",
        "--lifespan", "off", "--loop", "uvloop", "--http", "httptools",
        "--workers", str(workers), app,
    ]  # fmt: skip


def _serve_http(workers: int) -> tuple[list[str], dict]:
    """simsched's production HTTP server (bin/serve-http), as `make run` and docker use it."""
    return [SERVE_HTTP], {"HOST": common.HOST, "PORT": "{port}", "WEB_CONCURRENCY": str(workers)}


# name -> (argv, extra env, floor paths, is the peer)
def targets(names: list[str]) -> dict[str, tuple[list[str], dict, list[str], bool]]:
    simsched_floors = ["/floor/django", "/floor/drf"]
    known = {
        "daphne": (
            [common.DAPHNE, "-b", common.HOST, "-p", "{port}", "simsched.asgi:application"],
            {},
            simsched_floors,
            False,
        ),
        "uvicorn": (_uvicorn("simsched.asgi:application", 1), {}, simsched_floors, False),
        "uvicorn-2": (_uvicorn("simsched.asgi:application", 2), {}, simsched_floors, False),
        # The same server with agents' point writes sent through Django too (convergence/asgi.py)
        "uvicorn-long": (
            _uvicorn("simsched.asgi:application", 1),
            {"SIMSCHED_INGEST_SHORTCUT": "0"},
            simsched_floors,
            False,
        ),
        "serve-http": (*_serve_http(1), simsched_floors, False),
        "serve-http-2": (*_serve_http(2), simsched_floors, False),
    }
    chosen = {name: known[name] for name in names}
    chosen["peer"] = (_uvicorn("peer_seed.app:app", 1), {}, ["/empty"], True)
    return chosen


def loss_at(step: int) -> float:
    return 2.5 * math.exp(-step / 250_000) + 0.05 * math.sin(step * 0.37) + 0.1


class Steps:
    """The next unused step of each with-step simulation, shared by every target (each writes
    its own table, but simsched servers share one)."""

    def __init__(self):
        self.next: dict[tuple[str, int], int] = {}

    def take(self, table: str, simulation_id: int, count: int) -> range:
        first = self.next.get((table, simulation_id), 0)
        self.next[(table, simulation_id)] = first + count
        return range(first, first + count)


def bodies_for(kind: str, simulation_id: int, steps: range | int) -> list[bytes]:
    if kind == "floor":
        return [b"{}"] * steps
    if kind == "no step":
        return [
            json.dumps({"simulation_id": simulation_id, "loss_value": loss_at(i)}).encode()
            for i in range(steps)
        ]
    return [
        json.dumps({"simulation_id": simulation_id, "step": s, "loss_value": loss_at(s)}).encode()
        for s in steps
    ]


def run_clients(server, token: str, path: str, bodies: list[list[bytes]]) -> tuple:
    """One thread per client, each over its own keep-alive connection; (req/s, latencies,
    server CPU seconds per request)."""
    port = server.port
    results: list[list[float]] = [[] for _ in bodies]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(bodies) + 1)

    def run(index: int) -> None:
        try:
            client = common.RawClient(port, token)
            barrier.wait()
            latencies = results[index]
            for body in bodies[index]:
                t0 = time.perf_counter()
                status, data = client.post(path, body)
                latencies.append(time.perf_counter() - t0)
                if status not in (200, 201):
                    raise RuntimeError(f"{path} -> {status}: {data[:200]!r}")
            client.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    cpu = server.cpu_seconds()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu = server.cpu_seconds() - cpu
    if errors:
        raise errors[0]
    latencies = [x for r in results for x in r]
    return len(latencies) / elapsed, latencies, cpu / len(latencies)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--servers", default="daphne,serve-http,serve-http-2")
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also serve the simsched checkout in DIR (uvicorn, one worker) as `baseline`, to "
        "measure a change side by side (e.g. `git worktree add DIR HEAD~1`)",
    )
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()

    common.fresh_database()
    common.django_setup()
    token, sims = common.make_fixtures(simulations=2 * CLIENTS)
    no_step_sims, step_sims = sims[:CLIENTS], sims[CLIENTS:]
    steps = Steps()
    peer_env = {
        "PEER_DATABASE_URL": common.DATABASE_URL.replace("postgres://", "postgresql+psycopg://")
    }
    # (target, kind, clients) -> [per-round req/s], [latencies]
    rates: dict[tuple, list[float]] = {}
    latencies: dict[tuple, list[float]] = {}
    cpus: dict[tuple, list[float]] = {}
    servers = {}
    chosen = targets(args.servers.split(","))
    cwd = {name: common.ROOT for name in chosen}
    if args.baseline:
        chosen = {"baseline": chosen.get("uvicorn") or targets(["uvicorn"])["uvicorn"], **chosen}
        cwd["baseline"] = Path(args.baseline).resolve()
    try:
        for name, (argv, env, _, is_peer) in chosen.items():
            extra = {**(peer_env if is_peer else {}), **FLOOR_ENV, **env}
            if name == "baseline":
                extra["PYTHONPATH"] = f"{common.ROOT / 'bench'}:{cwd[name]}"
            servers[name] = common.Server(argv=argv, cwd=cwd[name], **extra)
            print(f"{name} on :{servers[name].port}", flush=True)
        names = list(chosen)
        for round_index in range(args.rounds):
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for name in order:
                _, _, floors, is_peer = chosen[name]
                table = "peer" if is_peer else "simsched"
                runs = []
                for clients in (1, CLIENTS):
                    per_client = PER_ROUND if clients == 1 else math.ceil(PER_ROUND / clients)
                    runs.append(
                        (
                            "no step",
                            clients,
                            "/convergence/data",
                            [bodies_for("no step", no_step_sims[i], per_client)
                             for i in range(clients)],
                        )
                    )  # fmt: skip
                    runs.append(
                        (
                            "with step",
                            clients,
                            "/convergence/data",
                            [bodies_for("with step", step_sims[i],
                                        steps.take(table, step_sims[i], per_client))
                             for i in range(clients)],
                        )
                    )  # fmt: skip
                for path in floors:
                    runs.append((f"floor {path}", 1, path, [bodies_for("floor", 0, PER_ROUND)]))
                for kind, clients, path, bodies in runs:
                    rate, lat, cpu = run_clients(servers[name], token, path, bodies)
                    rates.setdefault((name, kind, clients), []).append(rate)
                    cpus.setdefault((name, kind, clients), []).append(cpu)
                    latencies.setdefault((name, kind, clients), []).extend(lat)
            print(
                f"round {round_index + 1}: "
                + ", ".join(
                    f"{n} {rates[(n, 'no step', 1)][-1]:.0f}/{rates[(n, 'with step', 1)][-1]:.0f}"
                    for n in names
                ),
                flush=True,
            )
    finally:
        for server in servers.values():
            server.stop()
        common.drop_database()

    lines = report(rates, latencies, cpus, list(chosen), args.rounds)
    print("\n".join(lines))
    if not args.no_results:
        common.write_section(
            "hot_path",
            "Single-point hot path vs the seed's implementation (bench/hot_path.py)",
            f"cd /work/main && .venv/bin/python bench/hot_path.py --servers {args.servers} "
            f"--rounds {args.rounds}",
            "\n".join(lines),
        )
    return 0


def _ms(values: list[float], q: float) -> float:
    return common.percentile(values, q) * 1000


def report(rates, latencies, cpus, names, rounds) -> list[str]:
    lines = [
        "| server | body | clients | req/s (median of rounds; range) | p50 | p99 | server CPU "
        "per request | vs peer (req/s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in ("no step", "with step"):
        for clients in (1, CLIENTS):
            peer = statistics.median(rates[("peer", kind, clients)])
            for name in names:
                key = (name, kind, clients)
                r, lat = rates[key], latencies[key]
                ratio = statistics.median(rates[key]) / peer
                per_round = [a / b for a, b in zip(r, rates[("peer", kind, clients)], strict=True)]
                lines.append(
                    f"| {name} | {kind} | {clients} | **{statistics.median(r):.0f}** "
                    f"({min(r):.0f}–{max(r):.0f}) | {_ms(lat, 50):.2f} ms | "
                    f"{_ms(lat, 99):.2f} ms | {statistics.median(cpus[key]) * 1000:.2f} ms | "
                    + ("" if name == "peer" else f"**{ratio:.2f}×** ({min(per_round):.2f}–"
                       f"{max(per_round):.2f})")
                    + " |"
                )  # fmt: skip
    lines += [
        "",
        "The framework floor (an empty 200 on the same server, 1 client) and the endpoint's "
        "share of it:",
        "",
        "| server | empty 200 | req/s | p50 | server CPU per request | endpoint no step / floor "
        "| with step / floor |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in names:
        floors = sorted({k[1] for k in rates if k[0] == name and k[1].startswith("floor")})
        for kind in floors:
            floor = statistics.median(rates[(name, kind, 1)])
            no_step = statistics.median(rates[(name, "no step", 1)])
            with_step = statistics.median(rates[(name, "with step", 1)])
            lines.append(
                f"| {name} | `{kind.split(' ', 1)[1]}` | {floor:.0f} | "
                f"{_ms(latencies[(name, kind, 1)], 50):.2f} ms | "
                f"{statistics.median(cpus[(name, kind, 1)]) * 1000:.2f} ms | "
                f"{no_step / floor:.2f} | "
                f"{with_step / floor:.2f} |"
            )
    lines += [
        "",
        f"{rounds} rounds; in each, every server in turn (the order rotating) gets {PER_ROUND} "
        f"requests per body from 1 client, then {PER_ROUND} from {CLIENTS} concurrent clients "
        "(keep-alive raw sockets, each client its own simulation), then its empty 200s. "
        "`peer` is bench/peer_seed (FastAPI + SQLAlchemy, one uvicorn worker, uvloop + httptools, "
        "access log off), writing its own table in the same database. `serve-http` is "
        "simsched's production server (bin/serve-http), `-2` with two worker processes; "
        "`uvicorn` one worker with its flags, `uvicorn-long` the same with "
        "`SIMSCHED_INGEST_SHORTCUT=0` (every point through Django and DRF, "
        "convergence/asgi.py).",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
