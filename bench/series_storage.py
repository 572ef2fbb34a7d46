"""Bytes per point before and after the series table, on the same rows in the same sitting.

Migrates a throwaway database to convergence 0001 (one series per simulation), generates the
points inside PostgreSQL with their rollup, measures table + indexes + rollup after VACUUM FULL;
then migrates to 0002_series (which moves the rows to a `loss` series), VACUUM FULL, measures
again. Writes its section of bench/RESULTS.md.

    .venv/bin/python bench/series_storage.py [--points 1000000]
"""

import argparse
import subprocess
import sys
from datetime import UTC, datetime

import common

BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def migrate(target: str) -> None:
    subprocess.run(
        [common.PYTHON, "manage.py", "migrate", "convergence", target, "--verbosity", "0"],
        cwd=common.ROOT,
        env=common.server_env(),
        check=True,
    )


def load_old_schema(conn, simulation_id: int, total: int) -> None:
    """The 0001 schema's rows: points, then every rollup level from the one below."""
    conn.execute(
        """
        INSERT INTO convergence_data (simulation_id, step, timestamp, loss_value)
        SELECT %s, g, %s::timestamptz + g * interval '1 millisecond',
            2.5 * exp(-g / 2500000.0) + 0.05 * sin(g * 0.37) + 0.1
        FROM generate_series(0, %s - 1) AS g
        """,
        [simulation_id, BASE_TIME, total],
    )
    conn.execute(
        """
        INSERT INTO convergence_rollup (simulation_id, level, bucket, count, first_step,
            first_loss, last_step, last_loss, min_step, min_loss, max_step, max_loss)
        SELECT %s, 1, step / 16, count(*), min(step), min(loss_value), max(step),
            max(loss_value), min(step), min(loss_value), max(step), max(loss_value)
        FROM convergence_data WHERE simulation_id = %s GROUP BY step / 16
        """,
        [simulation_id, simulation_id],
    )
    for level in range(2, 7):
        conn.execute(
            """
            INSERT INTO convergence_rollup (simulation_id, level, bucket, count, first_step,
                first_loss, last_step, last_loss, min_step, min_loss, max_step, max_loss)
            SELECT simulation_id, %s, bucket / 16, sum(count), min(first_step),
                min(first_loss), max(last_step), max(last_loss), min(min_step), min(min_loss),
                max(max_step), max(max_loss)
            FROM convergence_rollup WHERE simulation_id = %s AND level = %s
            GROUP BY simulation_id, bucket / 16
            """,
            [level, simulation_id, level - 1],
        )


def sizes(conn) -> dict[str, int]:
    conn.execute("VACUUM FULL convergence_data")
    conn.execute("VACUUM FULL convergence_rollup")
    row = conn.execute(
        """
        SELECT pg_table_size('convergence_data'), pg_indexes_size('convergence_data'),
            pg_total_relation_size('convergence_rollup'),
            coalesce(pg_total_relation_size(to_regclass('convergence_series')), 0),
            (SELECT count(*) FROM convergence_data)
        """
    ).fetchone()
    return dict(zip(("table", "indexes", "rollup", "series", "points"), row, strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    import psycopg

    common.fresh_database()
    common.django_setup()
    migrate("0001")
    _, (simulation_id,) = common.make_fixtures(simulations=1)
    with psycopg.connect(common.DATABASE_URL, autocommit=True) as conn:
        load_old_schema(conn, simulation_id, args.points)
        before = sizes(conn)
    migrate("0002_series")
    with psycopg.connect(common.DATABASE_URL, autocommit=True) as conn:
        after = sizes(conn)
    common.drop_database()

    def per_point(s, key):
        return s[key] / s["points"]

    def total(s):
        return (s["table"] + s["indexes"] + s["rollup"] + s["series"]) / s["points"]

    lines = [
        "| bytes per point | before (0001) | after (0002_series) |",
        "| --- | --- | --- |",
    ]
    for key, label in [
        ("table", "points heap"),
        ("indexes", "points indexes"),
        ("rollup", "rollup (6 levels, with index)"),
        ("series", "series table"),
    ]:
        lines.append(f"| {label} | {per_point(before, key):.1f} | {per_point(after, key):.1f} |")
    ratio = total(after) / total(before)
    lines.append(f"| **total** | **{total(before):.1f}** | **{total(after):.1f}** ({ratio:.2f}x) |")
    lines.append("")
    lines.append(
        f"{before['points']:,} points of one simulation, generated inside PostgreSQL, measured "
        "after VACUUM FULL of each table; the same rows before and after the migration. "
        "The point row gains a 4-byte series id (appended after 0001's columns, so 8 bytes with "
        "alignment); the unique key (simulation, series, step) "
        "and the (series, timestamp) index take the place of (simulation, step) and "
        "(simulation, timestamp)."
    )
    body = "\n".join(lines)
    print(body)
    if not args.no_results:
        common.write_section(
            "series-storage",
            "Storage per point, before and after the series table",
            f".venv/bin/python bench/series_storage.py --points {args.points}",
            body,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
