"""Many series per run, and runs side by side (issue #11's figures), in one sitting on
PostgreSQL, against simsched's production server (bin/serve-http, one worker):

- batch ingestion of 1,000,000 steps x 4 series through the API (`values` points, 10,000 values
  per request) against a raw psycopg COPY of the same 4,000,000 rows, alternating in 5 rounds;
- `graph` of one series of a run holding 10,000,000 points in each of two series, and of both
  series in one request (`metric=loss,val/loss`);
- `compare` of 10 runs of 1,000,000 points each, one metric, `max_points=1000`.

The big runs are generated inside PostgreSQL (bench/ingest.py's `load_big`). Writes its section
of bench/RESULTS.md.

    .venv/bin/python bench/series.py [--steps 1000000] [--big 10000000] [--runs 10]
"""

import argparse
import json
import statistics
import time
from datetime import timedelta

import common
from ingest import BASE_TIME, copy_rows, load_big, loss_at, series_of

METRICS = ("loss", "val/loss", "lr", "grad_norm")
VALUES_PER_REQUEST = 10_000
SERVE_HTTP = str(common.ROOT / "bin" / "serve-http")


def value_of(metric: str, step: int) -> float:
    base = loss_at(step)
    return {"loss": base, "val/loss": base * 1.1, "lr": 3e-4, "grad_norm": 1.0 + base}[metric]


def bodies(first: int, last: int) -> list[bytes]:
    per = VALUES_PER_REQUEST // len(METRICS)
    out = []
    for start in range(first, last, per):
        points = [
            {
                "step": step,
                "values": {m: value_of(m, step) for m in METRICS},
                "timestamp": (BASE_TIME + timedelta(milliseconds=step)).isoformat(),
            }
            for step in range(start, min(start + per, last))
        ]
        out.append(json.dumps({"points": points}).encode())
    return out


def copy_series(conn, simulation_id: int, first: int, last: int) -> float:
    ids = {m: series_of(conn, simulation_id, m) for m in METRICS}
    conn.commit()
    rows = [
        (simulation_id, ids[m], step, BASE_TIME + timedelta(milliseconds=step), value_of(m, step))
        for step in range(first, last)
        for m in METRICS
    ]
    return copy_rows(conn, rows)


def ingestion(server, token, api_sim, copy_sim, steps, rounds=5) -> dict:
    import psycopg

    api_s = copy_s = 0.0
    ratios, stored = [], 0
    per_round = steps // rounds
    with psycopg.connect(common.DATABASE_URL) as conn:
        for r in range(rounds):
            first, last = r * per_round, (r + 1) * per_round
            prepared = bodies(first, last)
            client = common.Client(server.port, token)  # the server closes idle keep-alives
            started = time.perf_counter()
            for body in prepared:
                stored += client.json("POST", f"/convergence/{api_sim}/points", body)["stored"]
            api = time.perf_counter() - started
            client.close()
            copy = copy_series(conn, copy_sim, first, last)
            api_s, copy_s = api_s + api, copy_s + copy
            ratios.append(copy / api)
            print(f"  round {r + 1}: API {api:.1f} s, COPY {copy:.1f} s", flush=True)
    values = steps * len(METRICS)
    assert stored == values, (stored, values)
    return {
        "api_rate": values / api_s,
        "copy_rate": values / copy_s,
        "ratio": copy_s / api_s,
        "ratios": ratios,
    }


def timed_gets(server, token, paths: list[str], check) -> dict:
    client = common.Client(server.port, token)
    latencies, sizes = [], []
    for path in paths:
        t0 = time.perf_counter()
        status, data = client.request("GET", path)
        latencies.append(time.perf_counter() - t0)
        if status != 200:
            raise RuntimeError(f"{path} -> {status}: {data[:200]!r}")
        sizes.append(len(data))
        check(json.loads(data))
    client.close()
    return {
        "summary": common.summary_ms(latencies),
        "p50": statistics.median(latencies) * 1000,
        "bytes": statistics.median(sizes),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--big", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--compare-points", type=int, default=1_000_000)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()

    common.fresh_database()
    common.django_setup()
    token, sims = common.make_fixtures(simulations=3 + args.runs)
    api_sim, copy_sim, big_sim, compare_sims = sims[0], sims[1], sims[2], sims[3:]
    rows = []
    env = {"HOST": common.HOST, "PORT": "{port}", "WEB_CONCURRENCY": "1"}
    try:
        with common.Server(argv=[SERVE_HTTP], **env) as server:
            print(f"server on :{server.port}", flush=True)
            ing = ingestion(server, token, api_sim, copy_sim, args.steps)
            print(f"ingestion: API {ing['api_rate']:,.0f} values/s, ratio {ing['ratio']:.2f}")
            rows.append(
                (
                    f"batch ingestion, {args.steps:,} steps x {len(METRICS)} series "
                    f"({VALUES_PER_REQUEST:,} values per request)",
                    f"**{ing['api_rate']:,.0f} values/s**; raw COPY of the same rows "
                    f"{ing['copy_rate']:,.0f} rows/s; API / COPY **{ing['ratio']:.2f}** "
                    f"(rounds: {', '.join(f'{x:.2f}' for x in ing['ratios'])})",
                    "≥ 0.33",
                )
            )

            started = time.perf_counter()
            for metric in ("loss", "val/loss"):
                load_big(big_sim, args.big, metric)
            print(f"loaded 2 x {args.big:,} points in {time.perf_counter() - started:.0f} s")

            def one_series(answer):
                assert answer["returned_points"] <= 1000, answer["returned_points"]
                assert max(p["loss"] for p in answer["points"]) > 2.5  # the spikes are kept

            graph = timed_gets(
                server,
                token,
                [f"/convergence/{big_sim}/graph?metric=val/loss&max_points=1000"] * 200,
                one_series,
            )
            rows.append(
                (
                    f"`graph` of one series of a run with {args.big:,} points per series "
                    "(max_points=1000)",
                    f"**p50 {graph['p50']:.1f} ms**; {graph['summary']}; "
                    f"{graph['bytes'] / 1000:.0f} KB; spikes kept",
                    "p50 < 100 ms",
                )
            )

            def two_series(answer):
                assert [s["metric"] for s in answer["series"]] == ["loss", "val/loss"]

            both = timed_gets(
                server,
                token,
                [f"/convergence/{big_sim}/graph?metric=loss,val/loss&max_points=1000"] * 100,
                two_series,
            )
            rows.append(
                (
                    f"`graph?metric=loss,val/loss` of that run (2 x {args.big:,} points)",
                    f"**p50 {both['p50']:.1f} ms**; {both['summary']}; "
                    f"{both['bytes'] / 1000:.0f} KB",
                    "",
                )
            )

            started = time.perf_counter()
            for sim in compare_sims:
                load_big(sim, args.compare_points)
            print(f"loaded {args.runs} x {args.compare_points:,} in "
                  f"{time.perf_counter() - started:.0f} s")  # fmt: skip
            ids = ",".join(map(str, compare_sims))

            def all_runs(answer):
                assert len(answer["simulations"]) == args.runs

            compare = timed_gets(
                server,
                token,
                [f"/convergence/compare?simulations={ids}&metric=loss&max_points=1000"] * 100,
                all_runs,
            )
            rows.append(
                (
                    f"`compare` of {args.runs} runs x {args.compare_points:,} points, one "
                    "metric, max_points=1000",
                    f"**p50 {compare['p50']:.1f} ms**; {compare['summary']}; "
                    f"{compare['bytes'] / 1000:.0f} KB",
                    "p50 < 150 ms",
                )
            )
    finally:
        common.drop_database()

    lines = ["| measure | result | target |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines.append("")
    lines.append(
        "One sitting, PostgreSQL, `bin/serve-http` with one worker. API and COPY take turns "
        "on a fifth of the steps each round; request bodies are serialized before timing; "
        "COPY writes the points only (no rollup), the API also keeps the rollups. The big runs "
        "are generated inside PostgreSQL with their rollups built per level."
    )
    print("\n".join(lines))
    if not args.no_results:
        common.write_section(
            "series",
            "Many series per run and run comparison (bench/series.py)",
            "cd /work/main && .venv/bin/python bench/series.py",
            "\n".join(lines),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
