"""The points table at scale, partitioned: batch ingestion vs COPY while the table holds the
points, graph p50 of a fresh and of a compacted run, bytes per point, and the time of `compact`.

Generates `--points` points spread evenly over `--simulations` simulations inside PostgreSQL
(INSERT ... SELECT generate_series, `--chunk` runs a statement; the level-1 rollup built from
each partition's points, levels 2-6 from the level below), in the database
`bench_part` (SIMSCHED_BENCH_DB), measures, then drops it. The issue's size:

    SIMSCHED_BENCH_DB=bench_part .venv/bin/python bench/scale.py --points 100000000 \
        --simulations 1000

Half the runs (`--old-fraction`) finished 120 days ago, the rest are running on a machine each;
`compact --older-than 90d` then drops the old runs' raw points. Two more running runs take the
batch-vs-COPY rows. `--indexes-after` loads with the points' indexes, key and foreign key
dropped and builds them after (the same names and definitions as the migrations).
"""

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta

os.environ.setdefault("SIMSCHED_BENCH_DB", "bench_part")

import common  # noqa: E402
import ingest  # noqa: E402

SERVE_HTTP = str(common.ROOT / "bin" / "serve-http")
GRAPH_ROUNDS, GRAPH_PER_ROUND = 5, 20

POINTS_SQL = """
INSERT INTO convergence_data (simulation_id, series_id, step, timestamp, loss_value)
SELECT s.simulation_id, s.id, g, %(base)s::timestamptz + g * interval '1 millisecond',
    (2.5 + (s.simulation_id %% 10) * 0.05::float8) * exp(-g / 25000.0::float8)
        + 0.05 * sin(g * 0.37::float8) + 0.1
        + CASE WHEN g %% 1000003 = 17 THEN 3 ELSE 0 END
FROM convergence_series s, generate_series(0, %(per_run)s - 1) AS g
WHERE s.simulation_id = ANY(%(sims)s)
"""

# Level 1 from the points, one partition a statement (a sequential scan each, not an index
# walk per run); {partition} is a name from pg_partition_tree, not a value.
ROLLUP_1_SQL = """
INSERT INTO convergence_rollup (simulation_id, series_id, level, bucket, count,
    first_step, first_loss, last_step, last_loss, min_step, min_loss, max_step, max_loss,
    first_time, last_time)
SELECT simulation_id, series_id, 1, step / 16, count(*),
    min(step), (min(ARRAY[step::float8, loss_value]))[2],
    max(step), (max(ARRAY[step::float8, loss_value]))[2],
    (min(ARRAY[loss_value, step::float8]))[2]::bigint, min(loss_value),
    -(max(ARRAY[loss_value, -step::float8]))[2]::bigint, max(loss_value),
    min(timestamp), max(timestamp)
FROM {partition} GROUP BY simulation_id, series_id, step / 16
"""

ROLLUP_UP_SQL = """
INSERT INTO convergence_rollup (simulation_id, series_id, level, bucket, count,
    first_step, first_loss, last_step, last_loss, min_step, min_loss, max_step, max_loss,
    first_time, last_time)
SELECT simulation_id, series_id, %(level)s, bucket / 16, sum(count),
    min(first_step), (min(ARRAY[first_step::float8, first_loss]))[2],
    max(last_step), (max(ARRAY[last_step::float8, last_loss]))[2],
    (min(ARRAY[min_loss, min_step::float8]))[2]::bigint, min(min_loss),
    -(max(ARRAY[max_loss, -max_step::float8]))[2]::bigint, max(max_loss),
    min(first_time), max(last_time)
FROM convergence_rollup
WHERE simulation_id = ANY(%(sims)s) AND level = %(level)s - 1
GROUP BY simulation_id, series_id, bucket / 16
"""

# What --indexes-after drops before the load and builds after it (as the migrations made them).
DEFERRED_DDL = [
    (
        "ALTER TABLE convergence_data DROP CONSTRAINT convergence_point_step_uniq",
        "ALTER TABLE convergence_data ADD CONSTRAINT convergence_point_step_uniq "
        "UNIQUE (simulation_id, series_id, step)",
    ),
    (
        "ALTER TABLE convergence_data DROP CONSTRAINT convergence_data_pkey",
        "ALTER TABLE convergence_data ADD CONSTRAINT convergence_data_pkey "
        "PRIMARY KEY (id, simulation_id)",
    ),
    (
        "DROP INDEX convergence_series_time_idx",
        "CREATE INDEX convergence_series_time_idx ON convergence_data (series_id, timestamp)",
    ),
]


def series_fk(conn) -> tuple[str, str]:
    """(drop, add) statements of the points' foreign key to their series."""
    name = conn.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'convergence_data'::regclass "
        "AND contype = 'f'"
    ).fetchone()[0]
    return (
        f"ALTER TABLE convergence_data DROP CONSTRAINT {name}",
        f"ALTER TABLE convergence_data ADD CONSTRAINT {name} FOREIGN KEY (series_id) "
        "REFERENCES convergence_series (id) DEFERRABLE INITIALLY DEFERRED",
    )


def leaf_partitions(conn) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT relid::regclass::text FROM pg_partition_tree('convergence_data') WHERE isleaf"
        )
    ]


def load(sims: list[int], per_run: int, *, chunk: int, indexes_after: bool) -> dict:
    """Generate the points and rollups of `sims`; seconds of each step."""
    import psycopg

    timings = {}
    with psycopg.connect(common.DATABASE_URL, autocommit=True) as conn:
        conn.execute("SET work_mem = '256MB'")
        conn.execute("SET maintenance_work_mem = '1GB'")
        # The load is one writer: autovacuum would only compete with it (VACUUM runs after).
        partitions = leaf_partitions(conn)
        for table in [*partitions, "convergence_rollup"]:
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        conn.execute(
            "INSERT INTO convergence_series (simulation_id, metric) "
            "SELECT unnest(%s::bigint[]), 'loss'",
            [sims],
        )
        deferred = [*DEFERRED_DDL, series_fk(conn)] if indexes_after else []
        for drop, _ in deferred:
            conn.execute(drop)
        started = time.perf_counter()
        for i in range(0, len(sims), chunk):
            part = sims[i : i + chunk]
            with conn.transaction():
                conn.execute(
                    POINTS_SQL, {"base": ingest.BASE_TIME, "per_run": per_run, "sims": part}
                )
            done = min(i + chunk, len(sims)) * per_run
            elapsed = time.perf_counter() - started
            if (i // chunk) % 10 == 9 or i + chunk >= len(sims):
                print(f"  {done:,} points in {elapsed:.0f} s ({done / elapsed:,.0f}/s)", flush=True)
        timings["points"] = time.perf_counter() - started
        started = time.perf_counter()
        for partition in partitions:
            conn.execute(ROLLUP_1_SQL.format(partition=partition))
        timings["rollup_1"] = time.perf_counter() - started
        print(f"  rollup level 1 in {timings['rollup_1']:.0f} s", flush=True)
        started = time.perf_counter()
        for level in range(2, 7):
            for i in range(0, len(sims), chunk * 10):
                conn.execute(ROLLUP_UP_SQL, {"level": level, "sims": sims[i : i + chunk * 10]})
        timings["rollup_levels"] = time.perf_counter() - started
        started = time.perf_counter()
        for _, add in deferred:
            t0 = time.perf_counter()
            conn.execute(add)
            print(f"  {add[:80]}... {time.perf_counter() - t0:.0f} s", flush=True)
        timings["indexes"] = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute("VACUUM (ANALYZE) convergence_data, convergence_rollup, convergence_series")
        timings["vacuum"] = time.perf_counter() - started
        for table in [*partitions, "convergence_rollup"]:
            conn.execute(f"ALTER TABLE {table} RESET (autovacuum_enabled)")
    return timings


def storage(conn) -> dict[str, int]:
    """Bytes of the points (heap + indexes over every partition) and of the rollup; rows."""
    heap, indexes = conn.execute(
        "SELECT sum(pg_table_size(relid)), sum(pg_indexes_size(relid)) "
        "FROM pg_partition_tree('convergence_data') WHERE isleaf"
    ).fetchone()
    rollup = conn.execute("SELECT pg_total_relation_size('convergence_rollup')").fetchone()[0]
    points = conn.execute("SELECT count(*) FROM convergence_data").fetchone()[0]
    rollups = conn.execute("SELECT count(*) FROM convergence_rollup").fetchone()[0]
    return {
        "heap": int(heap),
        "indexes": int(indexes),
        "rollup": int(rollup),
        "points": int(points),
        "rollup_rows": int(rollups),
    }


def graphs(server, token, fresh: int, compacted: int, per_run: int) -> dict:
    """Alternating rounds of graph requests on the fresh and the compacted run."""
    results = {"fresh": [], "compacted": []}
    for _ in range(GRAPH_ROUNDS):
        for label, sim in (("fresh", fresh), ("compacted", compacted)):
            g = ingest.phase_graph(server, token, sim, per_run, requests=GRAPH_PER_ROUND)
            results[label].append(g)
    return {
        label: {
            "p50": statistics.median(g["p50"] for g in rounds),
            "rounds": [g["p50"] for g in rounds],
            "returned": rounds[-1]["returned"],
            "raw": rounds[-1]["raw"],
            "bytes": rounds[-1]["bytes"],
        }
        for label, rounds in results.items()
    }


def rollups_only(token, port, simulation_id) -> bool:
    client = common.Client(port, token)
    body = client.json("GET", f"/convergence/{simulation_id}/graph?max_points=1000")
    client.close()
    return bool(body.get("rollups_only"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=100_000_000)
    parser.add_argument("--simulations", type=int, default=1_000)
    parser.add_argument("--chunk", type=int, default=10, help="runs per INSERT statement")
    parser.add_argument("--old-fraction", type=float, default=0.5)
    parser.add_argument("--batch-points", type=int, default=1_000_000)
    parser.add_argument("--indexes-after", action="store_true")
    parser.add_argument("--keep", action="store_true", help="do not drop the database")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    per_run = args.points // args.simulations
    wall = time.perf_counter()

    import psycopg

    common.fresh_database()
    common.django_setup()
    token, sims = common.make_fixtures(simulations=args.simulations + 2)
    sims, (api_sim, copy_sim) = sims[:-2], sims[-2:]
    old = sims[: round(len(sims) * args.old_fraction)]
    fresh = sims[len(old) :]
    common.make_finished(old, days_ago=120)
    common.make_running([*fresh, api_sim, copy_sim])

    print(f"loading {per_run * len(sims):,} points into {len(sims):,} runs", flush=True)
    timings = load(sims, per_run, chunk=args.chunk, indexes_after=args.indexes_after)
    print(f"load: {timings}", flush=True)
    with psycopg.connect(common.DATABASE_URL, autocommit=True) as conn:
        before = storage(conn)
        partitions = len(leaf_partitions(conn))
    n = before["points"]
    print(f"storage: {before}", flush=True)

    env = {"HOST": common.HOST, "PORT": "{port}", "WEB_CONCURRENCY": "1"}
    with common.Server(argv=[SERVE_HTTP], **env) as server:
        batch = ingest.phase_batch_vs_copy(server, token, api_sim, copy_sim, args.batch_points)
        print(
            f"batch: API {batch['api_rate']:,.0f} points/s, COPY {batch['copy_rate']:,.0f} "
            f"rows/s, ratio {batch['ratio']:.2f} {[round(r, 2) for r in batch['ratios']]}",
            flush=True,
        )

    from django.utils import timezone

    from convergence.housekeeping import compact_points

    started = time.perf_counter()
    result = compact_points(older_than=timezone.now() - timedelta(days=90))
    compact_seconds = time.perf_counter() - started
    print(f"compact: {result.points_deleted:,} points in {compact_seconds:.1f} s", flush=True)
    with psycopg.connect(common.DATABASE_URL, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        started = time.perf_counter()
        conn.execute("VACUUM (ANALYZE) convergence_data")
        vacuum_after = time.perf_counter() - started
        after = storage(conn)
    print(f"vacuum after compact {vacuum_after:.0f} s; storage {after}", flush=True)

    with common.Server(argv=[SERVE_HTTP], **env) as server:
        g = graphs(server, token, fresh[-1], old[0], per_run)
        marked = rollups_only(token, server.port, old[0])
    print(f"graphs: {g}", flush=True)
    if not args.keep:
        common.drop_database()
    wall = time.perf_counter() - wall

    def per_point(nbytes: int) -> str:
        return f"{nbytes / n:.1f}"

    mib = 2**20
    lines = [
        f"{n:,} points over {len(sims):,} simulations ({per_run:,} each, one series), "
        f"`convergence_data` in {partitions} hash partitions by simulation; {len(old):,} runs "
        f"finished 120 days ago, {len(fresh):,} running (a machine each). "
        f"Whole run {wall / 60:.0f} min, holding the bench lock.",
        "",
        "| measure | result |",
        "| --- | --- |",
        f"| generate the points in PostgreSQL ({args.chunk} runs per INSERT ... SELECT "
        f"generate_series) | {timings['points']:.0f} s "
        f"({n / timings['points']:,.0f} points/s"
        + (", indexes, key and foreign key dropped" if args.indexes_after else ", indexes kept")
        + ") |",
        f"| rollup level 1 (one INSERT ... SELECT ... GROUP BY a partition) "
        f"| {timings['rollup_1']:.0f} s |",
        f"| rollup levels 2-6 | {timings['rollup_levels']:.0f} s |",
    ]
    if args.indexes_after:
        lines.append(f"| build the 3 indexes + foreign key after | {timings['indexes']:.0f} s |")
    lines += [
        f"| VACUUM ANALYZE after the load | {timings['vacuum']:.0f} s |",
        f"| points heap, all partitions | {before['heap'] / mib:,.0f} MiB, "
        f"{per_point(before['heap'])} bytes/point |",
        f"| points indexes (key, unique (simulation, series, step), (series, timestamp)) "
        f"| {before['indexes'] / mib:,.0f} MiB, {per_point(before['indexes'])} bytes/point |",
        f"| **points, table + indexes (without rollups)** "
        f"| **{per_point(before['heap'] + before['indexes'])} bytes/point** |",
        f"| rollup, 6 levels ({before['rollup_rows']:,} rows, with index) "
        f"| {before['rollup'] / mib:,.0f} MiB, {per_point(before['rollup'])} bytes/point |",
        f"| **with rollups** "
        f"| **{per_point(before['heap'] + before['indexes'] + before['rollup'])} bytes/point**, "
        f"{(before['heap'] + before['indexes'] + before['rollup']) / 2**30:.1f} GiB |",
        f"| batch ingestion through the API into a running run, {args.batch_points:,} points "
        f"in 10,000-point POSTs (bin/serve-http, one worker) "
        f"| **{batch['api_rate']:,.0f} points/s** ({batch['api_seconds']:.1f} s) |",
        f"| raw psycopg COPY of the same rows into convergence_data "
        f"| {batch['copy_rate']:,.0f} rows/s ({batch['copy_seconds']:.1f} s) |",
        f"| API / COPY at {n / 1e6:,.0f}M rows | **{batch['ratio']:.2f}** (per round: "
        f"{', '.join(f'{x:.2f}' for x in batch['ratios'])}) |",
        f"| `compact --older-than 90d` ({result.simulations:,} runs ended 120 days ago) "
        f"| {result.points_deleted:,} points in **{compact_seconds:.0f} s** "
        f"({result.points_deleted / max(compact_seconds, 1e-9):,.0f} points/s) |",
        f"| VACUUM ANALYZE after compact | {vacuum_after:.0f} s; the table keeps its "
        f"{(after['heap'] + after['indexes']) / mib:,.0f} MiB (freed pages are reused by "
        f"later inserts) for {after['points']:,} rows |",
        f"| graph p50, fresh run ({g['fresh']['raw']:,} raw points, max_points=1000) "
        f"| **{g['fresh']['p50']:.1f} ms** (rounds: "
        f"{', '.join(f'{x:.1f}' for x in g['fresh']['rounds'])}); "
        f"{g['fresh']['returned']} points, {g['fresh']['bytes']:,.0f} bytes |",
        f"| graph p50, compacted run (rollups only{', marked' if marked else ''}) "
        f"| **{g['compacted']['p50']:.1f} ms** (rounds: "
        f"{', '.join(f'{x:.1f}' for x in g['compacted']['rounds'])}); "
        f"{g['compacted']['returned']} points, {g['compacted']['bytes']:,.0f} bytes |",
        "",
        f"API and COPY take turns in 5 rounds of a fifth of the rows, while the table holds the "
        f"{n / 1e6:,.0f}M points; graph requests alternate between the two runs in "
        f"{GRAPH_ROUNDS} rounds of {GRAPH_PER_ROUND} (median of the round p50s).",
    ]
    if not args.no_results:
        common.write_section(
            "scale",
            "The points table at scale, partitioned (bench/scale.py)",
            "SIMSCHED_BENCH_DB=bench_part .venv/bin/python bench/scale.py "
            f"--points {args.points} --simulations {args.simulations} --chunk {args.chunk} "
            f"--batch-points {args.batch_points} --old-fraction {args.old_fraction}"
            + (" --indexes-after" if args.indexes_after else ""),
            "\n".join(lines),
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
