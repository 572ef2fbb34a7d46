"""Convergence data at scale: batch ingestion vs raw COPY, single-point requests, graph latency.

Runs the real server (daphne, DEBUG off) on PostgreSQL + Redis against a throwaway database
`simsched_bench`, and writes its section of bench/RESULTS.md.

    .venv/bin/python bench/ingest.py [--points 1000000] [--big 10000000] [--skip-big]
"""

import argparse
import json
import math
import statistics
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import common

BATCH = 10_000
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
TIME_BUDGET_SECONDS = 900  # every phase stops by itself well before this


def loss_at(step: int) -> float:
    return 2.5 * math.exp(-step / 250_000) + 0.05 * math.sin(step * 0.37) + 0.1


def batch_bodies(total: int) -> list[bytes]:
    """Pre-serialized request bodies, so the client's JSON work is not timed."""
    bodies = []
    for start in range(0, total, BATCH):
        points = [
            {
                "step": step,
                "loss_value": loss_at(step),
                "timestamp": (BASE_TIME + timedelta(milliseconds=step)).isoformat(),
            }
            for step in range(start, min(start + BATCH, total))
        ]
        bodies.append(json.dumps({"points": points}).encode())
    return bodies


def phase_batch(server, token, simulation_id, bodies) -> dict:
    client = common.Client(server.port, token)
    started = time.perf_counter()
    stored = 0
    for body in bodies:
        result = client.json("POST", f"/convergence/{simulation_id}/points", body)
        stored += result["stored"]
        if time.perf_counter() - started > TIME_BUDGET_SECONDS:
            break
    elapsed = time.perf_counter() - started
    client.close()
    return {"stored": stored, "seconds": elapsed}


def series_of(conn, simulation_id: int, metric: str = "loss") -> int:
    """The series id of (simulation, metric), created if new."""
    conn.execute(
        "INSERT INTO convergence_series (simulation_id, metric) VALUES (%s, %s) "
        "ON CONFLICT DO NOTHING",
        [simulation_id, metric],
    )
    return conn.execute(
        "SELECT id FROM convergence_series WHERE simulation_id = %s AND metric = %s",
        [simulation_id, metric],
    ).fetchone()[0]


def phase_copy(conn, simulation_id, first, last) -> dict:
    """The same rows through psycopg 3 COPY straight into convergence_data (no rollup)."""
    series_id = series_of(conn, simulation_id)
    rows = [
        (simulation_id, series_id, step, BASE_TIME + timedelta(milliseconds=step), loss_at(step))
        for step in range(first, last)
    ]
    return {"stored": len(rows), "seconds": copy_rows(conn, rows)}


def copy_rows(conn, rows) -> float:
    """COPY (simulation_id, series_id, step, timestamp, loss_value) rows straight into
    convergence_data and commit; the seconds it took."""
    started = time.perf_counter()
    with conn.cursor() as cur:
        with cur.copy(
            "COPY convergence_data (simulation_id, series_id, step, timestamp, loss_value) "
            "FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)
    conn.commit()
    return time.perf_counter() - started


def phase_batch_vs_copy(server, token, api_sim, copy_sim, total, rounds=5) -> dict:
    """API and COPY take turns on the same rows, a fifth each time, so that load from other
    people on the machine weighs on both alike; the ratio of the totals is reported, and the
    spread of the per-round ratios with it."""
    import psycopg

    bodies = batch_bodies(total)
    per_round = max(len(bodies) // rounds, 1)
    api_s = copy_s = 0.0
    ratios = []
    server.reset_peak()
    with psycopg.connect(common.DATABASE_URL) as conn:
        for r in range(0, len(bodies), per_round):
            api = phase_batch(server, token, api_sim, bodies[r : r + per_round])
            copy = phase_copy(conn, copy_sim, r * BATCH, r * BATCH + api["stored"])
            api_s, copy_s = api_s + api["seconds"], copy_s + copy["seconds"]
            ratios.append(copy["seconds"] / api["seconds"])
    return {
        "api_rate": total / api_s,
        "api_seconds": api_s,
        "copy_rate": total / copy_s,
        "copy_seconds": copy_s,
        "ratio": copy_s / api_s,
        "ratios": ratios,
        "mem": server.peak_memory_mib(),
    }


def _single_bodies(simulation_id: int, count: int) -> list[bytes]:
    """Serialized before timing, as the batch phase's bodies are."""
    return [
        json.dumps(
            {"simulation_id": simulation_id, "step": step, "loss_value": loss_at(step)}
        ).encode()
        for step in range(count)
    ]


def _single_requests(port, token, bodies, deadline) -> list[float]:
    """Sequential single-point POSTs over one keep-alive connection."""
    client = common.RawClient(port, token)
    latencies = []
    for body in bodies:
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        status, data = client.post("/convergence/data", body)
        latencies.append(time.perf_counter() - t0)
        if status != 201:
            raise RuntimeError(f"single point -> {status}: {data[:200]!r}")
    client.close()
    return latencies


def settle() -> None:
    """Let PostgreSQL finish with the last phase's million rows (checkpoint, statistics) so
    the next phase does not share the disk and cores with that work."""
    import psycopg

    with psycopg.connect(common.DATABASE_URL, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) convergence_data, convergence_rollup")
        conn.execute("CHECKPOINT")


def phase_single(server, token, simulation_ids, *, clients, per_client) -> dict:
    server.reset_peak()
    deadline = time.monotonic() + 120
    results: list[list[float]] = [[] for _ in range(clients)]
    bodies = [_single_bodies(simulation_ids[index], per_client) for index in range(clients)]
    errors: list[BaseException] = []

    def run(index):
        try:
            results[index] = _single_requests(server.port, token, bodies[index], deadline)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    latencies = [x for r in results for x in r]
    return {
        "rps": len(latencies) / elapsed,
        "n": len(latencies),
        "summary": common.summary_ms(latencies),
        "p50": statistics.median(latencies) * 1000,
        "p99": common.percentile(latencies, 99) * 1000,
        "mem": server.peak_memory_mib(),
    }


def load_big(simulation_id: int, total: int, metric: str = "loss") -> float:
    """Fill a simulation fast: generate the rows in PostgreSQL, then build each rollup level
    with one INSERT ... SELECT ... GROUP BY (level 1 from the points, level L+1 from level L),
    with the same semantics as convergence/services.py."""
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(common.DATABASE_URL) as conn:
        series_id = series_of(conn, simulation_id, metric)
        conn.execute(
            """
            INSERT INTO convergence_data (simulation_id, series_id, step, timestamp, loss_value)
            SELECT %s, %s, g, %s::timestamptz + g * interval '1 millisecond',
                2.5 * exp(-g::float8 / 2500000) + 0.05 * sin(g::float8 * 0.37) + 0.1
                    + CASE WHEN g %% 1000003 = 17 THEN 3 ELSE 0 END
            FROM generate_series(0, %s - 1) AS g
            """,
            [simulation_id, series_id, BASE_TIME, total],
        )
        conn.execute(
            """
            INSERT INTO convergence_rollup (simulation_id, series_id, level, bucket, count,
                first_step, first_loss, last_step, last_loss, min_step, min_loss, max_step,
                max_loss, first_time, last_time)
            SELECT %s, %s, 1, step / 16, count(*),
                min(step), (min(ARRAY[step::float8, loss_value]))[2],
                max(step), (max(ARRAY[step::float8, loss_value]))[2],
                (min(ARRAY[loss_value, step::float8]))[2]::bigint, min(loss_value),
                -(max(ARRAY[loss_value, -step::float8]))[2]::bigint, max(loss_value),
                min(timestamp), max(timestamp)  -- the times grow with the steps here
            FROM convergence_data WHERE simulation_id = %s AND series_id = %s
            GROUP BY step / 16
            """,
            [simulation_id, series_id, simulation_id, series_id],
        )
        for level in range(2, 7):
            conn.execute(
                """
                INSERT INTO convergence_rollup (simulation_id, series_id, level, bucket, count,
                    first_step, first_loss, last_step, last_loss, min_step, min_loss, max_step,
                    max_loss, first_time, last_time)
                SELECT %s, %s, %s, bucket / 16, sum(count),
                    min(first_step), (min(ARRAY[first_step::float8, first_loss]))[2],
                    max(last_step), (max(ARRAY[last_step::float8, last_loss]))[2],
                    (min(ARRAY[min_loss, min_step::float8]))[2]::bigint, min(min_loss),
                    -(max(ARRAY[max_loss, -max_step::float8]))[2]::bigint, max(max_loss),
                    min(first_time), max(last_time)
                FROM convergence_rollup
                WHERE simulation_id = %s AND series_id = %s AND level = %s
                GROUP BY bucket / 16
                """,
                [simulation_id, series_id, level, simulation_id, series_id, level - 1],
            )
        conn.execute("ANALYZE convergence_data")
        conn.execute("ANALYZE convergence_rollup")
    return time.perf_counter() - started


def phase_graph(server, token, simulation_id, total, *, requests=200, zoom=False) -> dict:
    client = common.Client(server.port, token)
    server.reset_peak()
    latencies, sizes = [], []
    deadline = time.monotonic() + 120
    for i in range(requests):
        if time.monotonic() > deadline:
            break
        path = f"/convergence/{simulation_id}/graph?max_points=1000"
        if zoom:
            lo = (i * 7919 * 101) % (total // 2)
            path += f"&from_step={lo}&to_step={lo + total // 10}"
        t0 = time.perf_counter()
        status, data = client.request("GET", path)
        latencies.append(time.perf_counter() - t0)
        if status != 200:
            raise RuntimeError(f"graph -> {status}: {data[:200]!r}")
        sizes.append(len(data))
    body = json.loads(data)
    client.close()
    return {
        "summary": common.summary_ms(latencies),
        "p50": statistics.median(latencies) * 1000,
        "p99": common.percentile(latencies, 99) * 1000,
        "bytes": statistics.median(sizes),
        "returned": body["returned_points"],
        "raw": body["raw_points"],
        "mem": server.peak_memory_mib(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--big", type=int, default=10_000_000)
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()

    common.fresh_database()
    common.django_setup()
    token, sims = common.make_fixtures(simulations=12)
    api_sim, copy_sim, big_sim, single_sims = sims[0], sims[1], sims[2], sims[3:]
    lines = []
    with common.Server() as server:
        print(f"server on :{server.port}, idle RSS {server.rss_mib():.0f} MiB", flush=True)

        batch = phase_batch_vs_copy(server, token, api_sim, copy_sim, args.points)
        ratio = batch["ratio"]
        print(
            f"API batch: {batch['api_rate']:,.0f} points/s ({batch['api_seconds']:.1f} s); "
            f"raw COPY: {batch['copy_rate']:,.0f} rows/s; API/COPY = {ratio:.2f} "
            f"(rounds: {', '.join(f'{x:.2f}' for x in batch['ratios'])})",
            flush=True,
        )

        settle()
        seq = phase_single(server, token, single_sims, clients=1, per_client=3000)
        print(f"single sequential: {seq['rps']:.0f} req/s, {seq['summary']}", flush=True)
        conc = phase_single(server, token, single_sims[1:], clients=8, per_client=400)
        print(f"single 8 clients: {conc['rps']:.0f} req/s, {conc['summary']}", flush=True)

        graphs = [("1M", api_sim, args.points, False), ("1M zoom 10%", api_sim, args.points, True)]
        if not args.skip_big:
            load_seconds = load_big(big_sim, args.big)
            print(f"loaded {args.big:,} points + rollup in {load_seconds:.0f} s", flush=True)
            graphs += [("10M", big_sim, args.big, False), ("10M zoom 10%", big_sim, args.big, True)]
        graph_results = {}
        for label, sim, total, zoom in graphs:
            g = phase_graph(server, token, sim, total, zoom=zoom)
            graph_results[label] = g
            print(
                f"graph {label}: {g['summary']}, {g['bytes']:.0f} bytes, "
                f"{g['returned']} of {g['raw']:,} points",
                flush=True,
            )
        overall_peak = max(batch["mem"], seq["mem"], conc["mem"])

    lines += [
        "| measure | result | target |",
        "| --- | --- | --- |",
        f"| batch ingestion via API, {args.points:,} points in 10,000-point POSTs "
        f"| **{batch['api_rate']:,.0f} points/s** ({batch['api_seconds']:.1f} s) | |",
        f"| raw psycopg COPY of the same rows into convergence_data "
        f"| {batch['copy_rate']:,.0f} rows/s ({batch['copy_seconds']:.1f} s) | |",
        f"| API / COPY | **{ratio:.2f}** (per round: "
        f"{', '.join(f'{x:.2f}' for x in batch['ratios'])}) | ≥ 0.33 |",
        f"| single-point POST /convergence/data, 1 keep-alive client | **{seq['rps']:.0f} req/s**; "
        f"{seq['summary']} | ≥ 400 req/s |",
        f"| single-point POST, 8 concurrent clients | **{conc['rps']:.0f} req/s**; "
        f"{conc['summary']} | |",
    ]
    for label, g in graph_results.items():
        lines.append(
            f"| graph {label} (max_points=1000) | **{g['summary']}**; {g['bytes']:.0f} bytes, "
            f"{g['returned']} of {g['raw']:,} points | < 100 ms p50 at 10M |"
        )
    lines += [
        "",
        "Peak server memory (VmHWM of the daphne process, reset before each phase): "
        f"batch {batch['mem']:.0f} MiB, single sequential {seq['mem']:.0f} MiB, "
        f"single concurrent {conc['mem']:.0f} MiB, "
        + ", ".join(f"graph {k} {g['mem']:.0f} MiB" for k, g in graph_results.items())
        + f"; highest during ingestion {overall_peak:.0f} MiB.",
        "",
        "Batch bodies carry step, loss_value and an ISO timestamp per point and are serialized "
        "before timing. API and COPY alternate in 5 rounds of a fifth of the rows each. "
        "The 10M simulation is generated inside PostgreSQL (INSERT ... SELECT "
        "generate_series) and its rollup built with one INSERT ... SELECT ... GROUP BY per level.",
    ]
    common.drop_database()
    if not args.no_results:
        common.write_section(
            "ingest",
            "Convergence data at scale (bench/ingest.py)",
            "cd /work/main && .venv/bin/python bench/ingest.py",
            "\n".join(lines),
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
