"""What the client library costs the training process: `run.log()` per call (p50, p99), and
the slowdown of a loop doing ~10,000 steps/s of pure-Python work (the worst case: the sender
thread competes for the GIL) with logging on against off, alternating rounds in one run.

    .venv/bin/python bench/agent_log.py [--rounds 6] [--steps 50000] [--series 3]

Needs PostgreSQL and Redis on 127.0.0.1 (see bench/README.md); sends to a real daphne.
"""

import argparse
import hashlib
import resource
import statistics
import tempfile
import time

import simsched_agent
from common import Server, django_setup, fresh_database, make_fixtures, percentile, write_section

NOTE = """

Both loops build the step's values; only the on rounds call run.log(). One real daphne on
PostgreSQL receives the batches (every 0.5 s) on the same 2 cores, which other people's test
runs share: the wall-clock rows include the server's and the database's work competing for
those cores, and are noisy; the CPU row is what the library itself costs the training process.
"""
STEP_SECONDS = 100e-6  # 10,000 steps/s
SERIES = ["loss", "lr", "val/loss", "grad_norm"]


def make_work(kind: str):
    """A step's work taking ~100 µs: pure Python (holds the GIL, the worst case for a sender
    thread) or SHA-256 of a buffer (C code that releases the GIL, like a CUDA or numpy call)."""
    size = 1024
    while True:
        step = _work(kind, size)
        start = time.perf_counter()
        for _ in range(200):
            step()
        per_step = (time.perf_counter() - start) / 200
        if per_step > 20e-6:
            return _work(kind, max(1, round(size * STEP_SECONDS / per_step)))
        size *= 2


def _work(kind: str, size: int):
    if kind == "released":
        buffer = bytes(size * 64)
        return lambda: hashlib.sha256(buffer).digest()[0] * 1e-9
    return lambda: _python_work(size)


def _python_work(n: int) -> float:
    total = 0.0
    for i in range(n):
        total += i * 0.5
    return total * 1e-9


def cpu_seconds() -> float:
    """CPU time of this (the training) process, every thread: the loop and the sender."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def training_loop(steps: int, first: int, work, run, names, timings: list | None) -> float:
    """Seconds for `steps` steps of `work()`, each followed by run.log() when `run` is set."""
    clock = time.perf_counter_ns
    start = time.perf_counter()
    for step in range(first, first + steps):
        loss = work()
        values = {name: loss + i for i, name in enumerate(names)}
        if run is not None:
            before = clock()
            run.log(step, values)
            timings.append(clock() - before)
    return time.perf_counter() - start


def measure(args, work, kind, url, token, simulation_id, spool) -> str:
    """Alternating off/on rounds of one kind of work; its section of the results."""

    names = SERIES[: args.series]
    base = 0 if kind == "python" else 10_000_000
    off, on, timings, stats, cpu_off, cpu_on = [], [], [], [], [], []
    training_loop(5000, 0, work, None, names, None)  # warm up
    for index in range(args.rounds):
        cpu = cpu_seconds()
        off.append(training_loop(args.steps, 0, work, None, names, None))
        cpu_off.append(cpu_seconds() - cpu)
        run = simsched_agent.init(url, token, simulation_id, spool_dir=spool)
        cpu = cpu_seconds()
        on.append(training_loop(args.steps, base + index * args.steps, work, run, names, timings))
        run.finish(timeout=60)  # the last batch's encoding is counted too
        cpu_on.append(cpu_seconds() - cpu)
        stats.append(run.stats)
        print(f"{kind} round {index + 1}: off {off[-1]:.3f} s, on {on[-1]:.3f} s, {stats[-1]}")
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
    cpu_overhead = statistics.median(cpu_on) / statistics.median(cpu_off) - 1
    per_step = (statistics.median(cpu_on) - statistics.median(cpu_off)) / args.steps * 1e6
    cpu = f"**{cpu_overhead:+.1%}** ({per_step:.1f} µs of CPU per step; medians of {args.rounds})"
    rows = [
        ("measure", "result", "target"),
        ("---", "---", "---"),
        (
            f"`run.log(step, {{{args.series} series}})` per call, in the loop below",
            call,
            "p99 < 20 µs",
        ),
        (
            f"loop of {1 / STEP_SECONDS:,.0f} steps/s, logging on vs off (wall clock)",
            loop,
            "< 2%",
        ),
        ("CPU of the training process (loop + sender thread), on vs off", cpu, "< 2%"),
        (
            "values stored by the server / logged",
            f"{stored:,} / {expected:,} (lost: {lost})",
            "all",
        ),
    ]
    table = "\n".join("| " + " | ".join(row) + " |" for row in rows)
    title = {
        "python": "pure-Python work (holds the GIL: the worst case)",
        "released": "work in C that releases the GIL (like CUDA or numpy calls)",
    }[kind]
    medians = f"median {statistics.median(off):.3f} s off, {statistics.median(on):.3f} s on"
    return f"**Steps of {title}**; rounds: {medians}\n\n{table}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6, help="Off/on pairs.")
    parser.add_argument("--steps", type=int, default=50_000, help="Steps per round.")
    parser.add_argument("--series", type=int, default=3, choices=range(1, 5))
    args = parser.parse_args()
    fresh_database()
    django_setup()
    token, (simulation_id,) = make_fixtures(simulations=1)
    sections = []
    with Server() as server, tempfile.TemporaryDirectory() as spool:
        url = f"http://127.0.0.1:{server.port}"
        for kind in ("python", "released"):
            sections.append(measure(args, make_work(kind), kind, url, token, simulation_id, spool))
    body = "\n\n".join(sections) + NOTE
    print(body)
    write_section(
        "agent_log",
        "The client library inside a training loop (bench/agent_log.py)",
        f"cd /work/main && .venv/bin/python bench/agent_log.py --series {args.series}",
        body,
    )


if __name__ == "__main__":
    main()
