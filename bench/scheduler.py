"""The scheduler under contention: 10,000 pending simulations, 500 machines, 4 assigner
processes, each calling simulations.scheduler.assign_pending() in a loop while it also runs
and finishes simulations (through simulations.services), so machines free up, until the
queue is drained. Then checks that no machine was ever double-booked.

    .venv/bin/python bench/scheduler.py [--simulations 10000] [--machines 500] [--workers 4]
"""

import argparse
import json
import random
import subprocess
import sys
import time
from collections import defaultdict
from decimal import Decimal

import common

WORKER_SECONDS = 900
FINISH_PER_ROUND = 25


def build_fleet(machines: int, simulations: int) -> None:
    from machines.models import Machine
    from simulations.models import Simulation

    rng = random.Random(7)
    shapes = [(0, 64, 16), (1, 128, 32), (2, 256, 48), (4, 512, 96), (8, 1024, 192)]
    fleet = []
    for i in range(machines):
        gpus, memory, cores = shapes[i % len(shapes)]
        fleet.append(
            Machine(
                name=f"bench-{i:04d}",
                cpu="bench cpu",
                gpu=f"{gpus}x bench" if gpus else "",
                memory=memory,
                cpu_cores=cores,
                gpu_count=gpus,
                hourly_cost=Decimal(gpus * 3 + memory // 64) + Decimal(rng.randint(0, 99)) / 100,
            )
        )
    Machine.objects.bulk_create(fleet)
    queue = []
    for i in range(simulations):
        gpus, memory, cores = rng.choice(shapes)
        queue.append(
            Simulation(
                name=f"queued-{i}",
                priority=rng.randint(-5, 5),
                required_gpus=gpus,
                required_memory=rng.randint(1, memory),
                required_cpu_cores=rng.randint(0, cores),
            )
        )
    Simulation.objects.bulk_create(queue, batch_size=2000)


def worker(index: int, workers: int) -> dict:
    """One assigner process: assign, then run and finish simulations on its share of the
    machines (machine id modulo the number of workers), until nothing is left."""
    from django.db.models.functions import Mod

    from simsched.exceptions import ConflictError
    from simulations.models import Simulation
    from simulations.scheduler import assign_pending
    from simulations.services import simulation_finish, simulation_start

    stats = {"worker": index, "calls": 0, "assigned": 0, "finished": 0, "conflicts": 0}
    deadline = time.monotonic() + WORKER_SECONDS
    while time.monotonic() < deadline:
        stats["calls"] += 1
        stats["assigned"] += len(assign_pending())
        mine = list(
            Simulation.objects.filter(status=Simulation.Status.SCHEDULED)
            .annotate(shard=Mod("machine_id", workers))
            .filter(shard=index)
            .order_by("scheduled_at")[:FINISH_PER_ROUND]
        )
        for simulation in mine:
            try:
                simulation_finish(simulation=simulation_start(simulation=simulation))
                stats["finished"] += 1
            except ConflictError:
                stats["conflicts"] += 1
        if not mine:
            if not Simulation.objects.filter(status__in=["pending", *Simulation.ACTIVE]).exists():
                break
            time.sleep(0.01)
    return stats


def double_bookings() -> tuple[int, int]:
    """Overlapping [scheduled_at, finished_at] intervals on one machine; and how many
    simulations were placed."""
    from simulations.models import Simulation

    by_machine = defaultdict(list)
    placed = Simulation.objects.exclude(scheduled_at=None).values_list(
        "machine_id", "scheduled_at", "finished_at"
    )
    for machine_id, start, end in placed:
        by_machine[machine_id].append((start, end))
    overlaps = 0
    for intervals in by_machine.values():
        intervals.sort()
        for (_, prev_end), (next_start, _) in zip(intervals, intervals[1:], strict=False):
            if prev_end is None or next_start < prev_end:
                overlaps += 1
    return overlaps, len(placed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--simulations", type=int, default=10_000)
    parser.add_argument("--machines", type=int, default=500)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()

    if args.worker is not None:
        common.django_setup()
        from simsched.broadcast import sent_in_the_background

        with sent_in_the_background():  # as manage.py scheduler sends its change events
            stats = worker(args.worker, args.workers)
        print(json.dumps(stats), flush=True)
        return 0

    common.fresh_database()
    common.django_setup()
    build_fleet(args.machines, args.simulations)
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                common.PYTHON,
                __file__,
                "--worker",
                str(i),
                "--workers",
                str(args.workers),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(args.workers)
    ]
    stats = [json.loads(p.communicate(timeout=WORKER_SECONDS + 60)[0].strip()) for p in procs]
    elapsed = time.perf_counter() - started

    from simulations.models import Simulation

    left = Simulation.objects.filter(status="pending").count()
    overlaps, placed = double_bookings()
    common.drop_database()
    calls = sum(s["calls"] for s in stats)
    finished = sum(s["finished"] for s in stats)
    lines = [
        "| measure | result |",
        "| --- | --- |",
        f"| simulations placed / queued | {placed:,} / {args.simulations:,} "
        f"({left} left pending) |",
        f"| wall time to drain the queue | {elapsed:.1f} s |",
        f"| assignments per second | **{placed / elapsed:,.0f}** |",
        f"| double-bookings (overlapping intervals on one machine) | **{overlaps}** (must be 0) |",
        f"| explicit assign_pending() calls | {calls:,} (plus one after each finish, on commit) |",
        f"| simulations run and finished by the workers | {finished:,} |",
        "",
        f"{args.machines} machines in 5 shapes, {args.workers} assigner OS processes on "
        "PostgreSQL (+ Redis for the change events). Each process loops: assign_pending(), "
        f"then start and finish up to {FINISH_PER_ROUND} scheduled simulations on its share "
        "of the machines (simulations.services), whose commits trigger more assignment. Past "
        "the first 500, every assignment waits for a finish, so this measures the whole "
        "finish → assign cycle, with each commit's change events sent through Redis.",
    ]
    if not args.no_results:
        common.write_section(
            "scheduler",
            "The scheduler under contention (bench/scheduler.py)",
            "cd /work/main && .venv/bin/python bench/scheduler.py",
            "\n".join(lines),
        )
    print("\n".join(lines))
    print(json.dumps(stats))
    return 0 if overlaps == 0 and left == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
