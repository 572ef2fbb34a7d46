"""The points table at scale, partitioned: storage per point, graph p50 of a running and of a
compacted run, and the time of `compact`.

Generates `--points` points spread over `--simulations` simulations inside PostgreSQL
(generate_series, rollups built per level as bench/ingest.py does), in database `bench_part`
(SIMSCHED_BENCH_DB), then drops it. The brief's target is 100,000,000 points over 1,000 runs:

    SIMSCHED_BENCH_DB=bench_part .venv/bin/python bench/scale.py --points 100000000 \
        --simulations 1000
"""

import argparse
import os
import sys
import time
from datetime import timedelta

os.environ.setdefault("SIMSCHED_BENCH_DB", "bench_part")

import common  # noqa: E402
import ingest  # noqa: E402


def storage(conn) -> tuple[int, int]:
    """(bytes of convergence_data over its partitions, tables + indexes; rows)."""
    size = conn.execute(
        """
        SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)
        FROM pg_class c LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
        WHERE c.relname = 'convergence_data'
            OR i.inhparent = 'convergence_data'::regclass
        """
    ).fetchone()[0]
    rows = conn.execute("SELECT count(*) FROM convergence_data").fetchone()[0]
    return int(size), int(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=100_000_000)
    parser.add_argument("--simulations", type=int, default=1_000)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    per_run = args.points // args.simulations

    import psycopg

    common.fresh_database()
    common.django_setup()
    token, sims = common.make_fixtures(simulations=args.simulations)
    started = time.perf_counter()
    for sim in sims:
        ingest.load_big(sim, per_run)
    load_seconds = time.perf_counter() - started
    with psycopg.connect(common.DATABASE_URL, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) convergence_data, convergence_rollup")
        size, rows = storage(conn)
        partitions = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'convergence_data'::regclass"
        ).fetchone()[0]
    print(f"loaded {rows:,} points in {load_seconds:.0f} s; {size / rows:.1f} bytes/point")

    from django.utils import timezone

    from convergence.housekeeping import compact_points
    from simulations.models import Simulation

    old = sims[: len(sims) // 2]
    Simulation.objects.filter(pk__in=old).update(
        status=Simulation.Status.FINISHED, finished_at=timezone.now() - timedelta(days=120)
    )
    Simulation.objects.filter(pk__in=sims[len(sims) // 2 :]).update(
        status=Simulation.Status.RUNNING
    )
    started = time.perf_counter()
    result = compact_points(older_than=timezone.now() - timedelta(days=90))
    compact_seconds = time.perf_counter() - started
    print(f"compact: {result.points_deleted:,} points in {compact_seconds:.1f} s")
    with psycopg.connect(common.DATABASE_URL, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) convergence_data")
        size_after, rows_after = storage(conn)

    with common.Server() as server:
        fresh = ingest.phase_graph(server, token, sims[-1], per_run, requests=100)
        compacted = ingest.phase_graph(server, token, sims[0], per_run, requests=100)
        fresh2 = ingest.phase_graph(server, token, sims[-1], per_run, requests=100)
    lines = [
        f"{rows:,} points over {args.simulations:,} simulations ({per_run:,} each), "
        f"convergence_data in {partitions} hash partitions. The machine was shared by other "
        "helpers' runs (loaded): take the figures as orders of magnitude.",
        "",
        "| measure | result |",
        "| --- | --- |",
        f"| generate points + rollups in PostgreSQL | {load_seconds:.0f} s |",
        f"| storage, table + indexes over all partitions | {size / 2**20:,.0f} MiB, "
        f"**{size / rows:.1f} bytes/point** |",
        f"| `compact` of the {len(old):,} runs ended 120 days ago | "
        f"{result.points_deleted:,} points in **{compact_seconds:.1f} s** "
        f"({result.points_deleted / max(compact_seconds, 1e-9):,.0f} points/s) |",
        f"| storage after compact (VACUUM, not FULL) | {size_after / 2**20:,.0f} MiB for "
        f"{rows_after:,} rows (freed pages are reused by later inserts) |",
        f"| graph p50, running run (max_points=1000) | **{fresh['p50']:.1f} ms** "
        f"(second pass {fresh2['p50']:.1f} ms); {fresh['summary']} |",
        f"| graph p50, compacted run (rollups only) | **{compacted['p50']:.1f} ms**; "
        f"{compacted['summary']} |",
    ]
    common.drop_database()
    if not args.no_results:
        common.write_section(
            "scale",
            "100 million points (bench/scale.py)",
            "SIMSCHED_BENCH_DB=bench_part .venv/bin/python bench/scale.py "
            f"--points {args.points} --simulations {args.simulations}",
            "\n".join(lines),
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
