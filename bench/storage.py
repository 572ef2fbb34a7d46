"""Bytes per stored convergence point on PostgreSQL: the points table, its indexes, and the
rollup that charts read, for runs generated inside PostgreSQL (as bench/ingest.py does).
The figures the README's "Scaling past one PostgreSQL" section rests on.

    .venv/bin/python bench/storage.py [--points 2000000] [--simulations 4]
"""

import argparse
import sys
import time

import common
import ingest


def sizes(conn) -> dict[str, int]:
    row = conn.execute(
        """
        SELECT pg_table_size('convergence_data'), pg_indexes_size('convergence_data'),
            pg_total_relation_size('convergence_rollup'),
            (SELECT count(*) FROM convergence_data), (SELECT count(*) FROM convergence_rollup)
        """
    ).fetchone()
    return dict(zip(("table", "indexes", "rollup", "points", "rollup_rows"), row, strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=2_000_000, help="per simulation")
    parser.add_argument("--simulations", type=int, default=4)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    import psycopg

    common.fresh_database()
    common.django_setup()
    _, sims = common.make_fixtures(simulations=args.simulations)
    started = time.perf_counter()
    for simulation_id in sims:
        ingest.load_big(simulation_id, args.points)
    load_seconds = time.perf_counter() - started
    with psycopg.connect(common.DATABASE_URL, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) convergence_data, convergence_rollup")
        s = sizes(conn)
    common.drop_database()
    n = s["points"]
    lines = [
        "| what | bytes per point |",
        "| --- | --- |",
        f"| points table (heap: id, simulation, step, timestamp, loss) | {s['table'] / n:.1f} |",
        f"| its indexes (primary key, (simulation, step), (simulation, timestamp)) "
        f"| {s['indexes'] / n:.1f} |",
        f"| rollup (all 6 levels, {s['rollup_rows']:,} rows, with its index) "
        f"| {s['rollup'] / n:.1f} |",
        f"| **total** | **{(s['table'] + s['indexes'] + s['rollup']) / n:.1f}** |",
        "",
        f"{n:,} points over {args.simulations} simulations, generated inside PostgreSQL "
        f"({load_seconds:.0f} s with their rollups), after VACUUM ANALYZE. "
        f"At this size 100,000,000 points take "
        f"{(s['table'] + s['indexes'] + s['rollup']) / n * 1e8 / 2**30:.1f} GiB, "
        f"their rollup alone {s['rollup'] / n * 1e8 / 2**30:.2f} GiB.",
    ]
    print("\n".join(lines))
    if not args.no_results:
        common.write_section(
            "storage",
            "Storage per point (bench/storage.py)",
            "cd /work/main && .venv/bin/python bench/storage.py",
            "\n".join(lines),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
