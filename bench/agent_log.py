"""What the client library costs the training process: `run.log()` per call (p50, p99), and
the slowdown of a loop doing ~10,000 steps/s of pure-Python work (the worst case: the sender
thread competes for the GIL) with logging on against off, alternating rounds in one run.

    .venv/bin/python bench/agent_log.py [--rounds 6] [--steps 50000] [--series 3]

Needs PostgreSQL and Redis on 127.0.0.1 (see bench/README.md); sends to a real daphne.
"""

import argparse
import statistics
import sys
import tempfile
import time

from common import Server, django_setup, fresh_database, make_fixtures, percentile, write_section

STEP_SECONDS = 100e-6  # 10,000 steps/s
SERIES = ["loss", "lr", "val/loss", "grad_norm"]


def calibrate() -> int:
    """Iterations of `work` that take one step's time on this machine."""
    n = 1000
    while True:
        start = time.perf_counter()
        for _ in range(200):
            work(n)
        per_step = (time.perf_counter() - start) / 200
        if per_step > 20e-6:
            return max(1, round(n * STEP_SECONDS / per_step))
        n *= 2


def work(n: int) -> float:
    total = 0.0
    for i in range(n):
        total += i * 0.5
    return total


def training_loop(steps: int, first: int, n: int, run, names, timings: list | None) -> float:
    """Seconds for `steps` steps of `work(n)`, each followed by run.log() when `run` is set."""
    clock = time.perf_counter_ns
    start = time.perf_counter()
    for step in range(first, first + steps):
        loss = work(n) * 1e-9
        values = {name: loss + i for i, name in enumerate(names)}
        if run is not None:
            before = clock()
            run.log(step, values)
            timings.append(clock() - before)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6, help="Off/on pairs.")
    parser.add_argument("--steps", type=int, default=50_000, help="Steps per round.")
    parser.add_argument("--series", type=int, default=3, choices=range(1, 5))
    args = parser.parse_args()
    sys.path.insert(0, "agent")
    import simsched_agent

    fresh_database()
    django_setup()
    token, (simulation_id,) = make_fixtures(simulations=1)
    names = SERIES[: args.series]
    n = calibrate()
    off, on, timings, stats = [], [], [], []
    with Server() as server, tempfile.TemporaryDirectory() as spool:
        url = f"http://127.0.0.1:{server.port}"
        training_loop(5000, 0, n, None, names, None)  # warm up
        for index in range(args.rounds):
            off.append(training_loop(args.steps, 0, n, None, names, None))
            run = simsched_agent.init(url, token, simulation_id, spool_dir=spool)
            on.append(training_loop(args.steps, index * args.steps, n, run, names, timings))
            run.finish(timeout=60)
            stats.append(run.stats)
            print(f"round {index + 1}: off {off[-1]:.3f} s, on {on[-1]:.3f} s, {stats[-1]}")
    p50, p99 = statistics.median(timings) / 1000, percentile(timings, 99) / 1000
    slowdown = statistics.median(on) / statistics.median(off) - 1
    per_round = ", ".join(f"{b / a - 1:+.1%}" for a, b in zip(off, on, strict=True))
    stored = sum(s["stored"] for s in stats)
    lost = sum(s["dropped"] + s["rejected"] for s in stats)
    expected = args.rounds * args.steps * args.series
    call = (
        f"**p50 {p50:.1f} µs, p99 {p99:.1f} µs** "
        f"(n={len(timings):,}, max {max(timings) / 1000:.0f} µs)"
    )
    loop = (
        f"**{slowdown:+.1%}** (median of {args.rounds} alternating rounds of "
        f"{args.steps:,} steps; per round: {per_round})"
    )
    rows = [
        ("measure", "result", "target"),
        ("---", "---", "---"),
        (
            f"`run.log(step, {{{args.series} series}})` per call, in the loop below",
            call,
            "p99 < 20 µs",
        ),
        (
            f"loop of {1 / STEP_SECONDS:,.0f} steps/s of pure-Python work, logging on vs off",
            loop,
            "< 2%",
        ),
        (
            "values stored by the server / logged",
            f"{stored:,} / {expected:,} (lost: {lost})",
            "all",
        ),
    ]
    table = "\n".join("| " + " | ".join(row) + " |" for row in rows)
    body = f"""
{table}

Off rounds: median {statistics.median(off):.3f} s; on rounds: median {statistics.median(on):.3f} s.
Both loops build the step's values; only the on rounds call run.log(). The work is pure
Python, so the sender thread's encoding competes with it for the GIL: the worst case. One
real daphne on PostgreSQL, on the same 2 cores, receives the batches (every 0.5 s).
"""
    print(body)
    write_section(
        "agent_log",
        "The client library inside a training loop (bench/agent_log.py)",
        f"cd /work/main && .venv/bin/python bench/agent_log.py --series {args.series}",
        body,
    )


if __name__ == "__main__":
    main()
