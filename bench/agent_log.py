"""What the client library costs the training process: `run.log()` per call (p50, p99), and
the slowdown of a loop doing ~10,000 steps/s of real work with logging on against off,
alternating rounds in one sitting, for pure-Python steps (the worst case: the library's threads
compete for the GIL) and for steps in C that release the GIL (like CUDA or numpy calls).

    .venv/bin/python bench/agent_log.py [--rounds 12] [--steps 30000] [--series 3]

Needs PostgreSQL and Redis on 127.0.0.1 (see bench/README.md); sends to a real daphne.

On a training machine the server is elsewhere and the process has cores to spare; on this
2-core box the loop's thread runs on one core and everything else of ours (the library's
sender thread and encoder process, daphne, its PostgreSQL backends) on the other, so that the
wall-clock slowdown is the library's, not the server's ingesting the same points. Both loops
are the same code with the same timing calls; only the on rounds call run.log().
"""

import argparse
import hashlib
import importlib
import os
import resource
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager

from common import (
    BENCH_DB,
    ROOT,
    Server,
    django_setup,
    fresh_database,
    make_fixtures,
    percentile,
    write_section,
)

simsched_agent = None  # imported by main() from --agent

NOTE = """

Both loops are the same code: the step's work, its values dict, and two clock reads around the
call site; only the on rounds call run.log() there (the p50 of the empty call site in the off
rounds is the clock's own cost, included in the per-call figures). The loop's thread is pinned
to one core; the library's sender thread and encoder process, daphne and its PostgreSQL
backends to the other, as on a training machine whose server is elsewhere; other people's test
runs share both cores, so the wall-clock rows are noisy (per-round figures shown; other
people's bursts only add time, so the fastest rounds are the least disturbed). The CPU rows are
what the library costs in all: in the training process (loop thread and sender thread; the
process row includes finish(), which sends the last batch after the timed loop: at most 0.5 s
of a round's steps), and in the encoder process, which turns batches into JSON off the
training process's GIL.
"""
STEP_SECONDS = 100e-6  # 10,000 steps/s
SERIES = ["loss", "lr", "val/loss", "grad_norm"]


@contextmanager
def on_cpus(cpus: set[int]):
    """Threads and processes started inside inherit `cpus` from the calling thread."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def pin_backends(cpus: set[int]) -> None:
    """The bench database's PostgreSQL backends (daphne's pool) onto the helper cores."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [BENCH_DB],
        )
        pids = [pid for (pid,) in cursor.fetchall()]
    for pid in pids:
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:
            pass


def make_work(kind: str):
    """A step's work taking ~100 µs: pure Python (holds the GIL, the worst case for a sender
    thread) or SHA-256 of a buffer (C code that releases the GIL, like a CUDA or numpy call).
    Sized by the fastest of several timings, three times over: one timing taken while someone
    else's burst ran made a step 150 µs instead of 100."""
    size = 1024
    while _seconds_per_step(_work(kind, size)) < 20e-6:
        size *= 2
    for _ in range(3):
        size = max(1, round(size * STEP_SECONDS / _seconds_per_step(_work(kind, size))))
    return _work(kind, size)


def _seconds_per_step(step) -> float:
    timings = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(200):
            step()
        timings.append((time.perf_counter() - start) / 200)
    return min(timings)


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


def cpu_seconds(who=resource.RUSAGE_SELF) -> float:
    """CPU time of this (the training) process, every thread; or of its ended children (the
    encoder processes, reaped at finish())."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def training_loop(steps: int, first: int, work, log, names, timings: list) -> float:
    """Seconds for `steps` steps of `work()`, each followed by log() when `log` is set."""
    clock = time.perf_counter_ns
    start = time.perf_counter()
    for step in range(first, first + steps):
        loss = work()
        values = {name: loss + i for i, name in enumerate(names)}
        before = clock()
        if log is not None:
            log(step, values)
        timings.append(clock() - before)
    return time.perf_counter() - start


def encoder_startup(url, token, simulation_id, spool, helpers, step) -> float:
    """CPU seconds of an encoder process that starts, writes one step and ends."""
    children = cpu_seconds(resource.RUSAGE_CHILDREN)
    with on_cpus(helpers):
        run = simsched_agent.init(url, token, simulation_id, spool_dir=spool)
    run.log(step, loss=1.0)
    run.finish(timeout=60)
    return cpu_seconds(resource.RUSAGE_CHILDREN) - children


def measure(args, work, kind, url, token, simulation_id, spool, helpers) -> str:
    """Alternating off/on rounds of one kind of work; its section of the results."""
    names = SERIES[: args.series]
    base = 0 if kind == "python" else 10_000_000
    off, on, calls_off, calls_on, stats = [], [], [], [], []
    cpu_off, cpu_on, cpu_encoder = [], [], []
    training_loop(5000, 0, work, None, names, [])  # warm up
    startup = encoder_startup(url, token, simulation_id, spool, helpers, base + 9_000_000)
    loop_off, loop_on, sender = [], [], []  # CPU of the loop's thread; of the sender thread
    for index in range(args.rounds):
        cpu, thread = cpu_seconds(), time.thread_time()
        off.append(training_loop(args.steps, 0, work, None, names, calls_off))
        loop_off.append(time.thread_time() - thread)
        cpu_off.append(cpu_seconds() - cpu)
        pin_backends(helpers)
        with on_cpus(helpers):  # the sender thread (and its encoder process) start there
            run = simsched_agent.init(url, token, simulation_id, spool_dir=spool)
        cpu, children = cpu_seconds(), cpu_seconds(resource.RUSAGE_CHILDREN)
        first = base + index * args.steps
        sender_clock = time.pthread_getcpuclockid(run._worker.ident)
        sender_before, thread = time.clock_gettime(sender_clock), time.thread_time()
        on.append(training_loop(args.steps, first, work, run.log, names, calls_on))
        loop_on.append(time.thread_time() - thread)
        sender.append(time.clock_gettime(sender_clock) - sender_before)
        run.finish(timeout=60)  # the last batch's encoding is counted too
        cpu_on.append(cpu_seconds() - cpu)
        cpu_encoder.append(cpu_seconds(resource.RUSAGE_CHILDREN) - children)
        stats.append(run.stats)
        print(f"{kind} round {index + 1}: off {off[-1]:.3f} s, on {on[-1]:.3f} s, {stats[-1]}")
    per_step = 1e6 / args.steps
    p50, p99 = statistics.median(calls_on) / 1000, percentile(calls_on, 99) / 1000
    ratios = [b / a - 1 for a, b in zip(off, on, strict=True)]
    slowdown = statistics.median(ratios)
    stored = sum(s["stored"] for s in stats)
    lost = sum(s["dropped"] + s["rejected"] for s in stats)
    expected = args.rounds * args.steps * args.series
    call = (
        f"**p50 {p50:.2f} µs, p99 {p99:.2f} µs** (n={len(calls_on):,}, max "
        f"{max(calls_on) / 1000:.0f} µs; the empty call site: p50 "
        f"{statistics.median(calls_off) / 1000:.2f} µs)"
    )
    added = (statistics.median(on) - statistics.median(off)) * per_step
    loop = (
        f"**{slowdown:+.2%}** (median of {args.rounds} off/on pairs of {args.steps:,} steps "
        f"of {statistics.median(off) * per_step:.0f} µs; {added:+.2f} µs per step between "
        "the medians; "
        f"per pair: {', '.join(f'{r:+.1%}' for r in ratios)}; ratio of the medians "
        f"{statistics.median(on) / statistics.median(off) - 1:+.2%}, of the fastest rounds "
        f"{min(on) / min(off) - 1:+.2%})"
    )
    extra = (statistics.median(cpu_on) - statistics.median(cpu_off)) * per_step
    cpu = (
        f"**{statistics.median(cpu_on) / statistics.median(cpu_off) - 1:+.2%}** "
        f"({extra:.2f} µs of CPU per step; medians of {args.rounds})"
    )
    in_loop = (statistics.median(loop_on) - statistics.median(loop_off)) * per_step
    threads = (
        f"loop thread {in_loop:+.2f} µs per step on vs off; sender thread "
        f"{statistics.median(sender) * per_step:.2f} µs per step during the loop"
    )
    encoder = (
        f"{(statistics.median(cpu_encoder) - startup) * per_step:.2f} µs of CPU per step, "
        f"and {startup * 1000:.0f} ms to start it, once per run"
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
            f"loop of {1 / STEP_SECONDS:,.0f} steps/s, logging on vs off (wall clock)",
            loop,
            "< 2%",
        ),
        ("CPU of the training process (loop + sender thread), on vs off", cpu, ""),
        ("of which, by thread (medians)", threads, ""),
        ("CPU of the encoder process (another core), per step", encoder, ""),
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
    parser.add_argument("--rounds", type=int, default=12, help="Off/on pairs.")
    parser.add_argument("--steps", type=int, default=30_000, help="Steps per round.")
    parser.add_argument("--series", type=int, default=3, choices=range(1, 5))
    parser.add_argument(
        "--agent",
        help="The agent/ folder of another checkout, to measure its library (printed only, "
        "not written to bench/RESULTS.md). Default: this checkout's, not an installed one.",
    )
    args = parser.parse_args()
    global simsched_agent
    sys.path.insert(0, args.agent or str(ROOT / "agent"))
    simsched_agent = importlib.import_module("simsched_agent")
    print("library:", simsched_agent.__file__)
    cpus = sorted(os.sched_getaffinity(0))
    loop_cpu, helpers = {cpus[0]}, set(cpus[1:]) or {cpus[0]}
    fresh_database()
    django_setup()
    token, (simulation_id,) = make_fixtures(simulations=1)
    sections = []
    with on_cpus(helpers):
        server = Server()
    with server, tempfile.TemporaryDirectory() as spool:
        os.sched_setaffinity(0, loop_cpu)
        url = f"http://127.0.0.1:{server.port}"
        for kind in ("python", "released"):
            work = make_work(kind)
            sections.append(measure(args, work, kind, url, token, simulation_id, spool, helpers))
    body = "\n\n".join(sections) + NOTE
    print(body)
    if args.agent:
        return
    write_section(
        "agent_log",
        "The client library inside a training loop (bench/agent_log.py)",
        "cd /work/main && .venv/bin/python bench/agent_log.py "
        f"--rounds {args.rounds} --steps {args.steps} --series {args.series}",
        body,
    )


if __name__ == "__main__":
    main()
