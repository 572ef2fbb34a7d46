"""The scheduler under contention: 10,000 pending simulations, 500 machines, 4 assigner
processes, each calling simulations.scheduler.assign_pending() in a loop while it also runs
and finishes simulations (through simulations.services), so machines free up, until the
queue is drained. Then checks that no machine was ever double-booked.

    .venv/bin/python bench/scheduler.py [--simulations 10000] [--machines 500] [--workers 4]

`--scenario priorities` instead runs mixed priorities, owners' budgets and preemptible runs
through the scheduler's periodic pass (simulations.housekeeping.scheduler_pass) in one process,
tick by tick, the same arrivals with and without preemption in alternating rounds; it counts
double bookings and budget overruns at every tick and the high-priority runs' wait in ticks.

    SIMSCHED_BENCH_DB=simsched_bench_guards \\
        .venv/bin/python bench/scheduler.py --scenario priorities
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


# --- mixed priorities, budgets and preemption ---------------------------------------------------

PRIORITY_TICKS = 160
PRIORITY_ROUNDS = 2  # of each mode, alternating


def _priority_arrivals(seed: int = 11) -> dict[int, list[dict]]:
    """Per tick, the simulations that arrive: mostly long low-priority preemptible runs, some
    short urgent ones; six owners."""
    rng = random.Random(seed)
    arrivals = defaultdict(list)
    for tick in range(PRIORITY_TICKS - 40):
        for _ in range(rng.choice([0, 1, 1, 2])):
            urgent = rng.random() < 0.2
            arrivals[tick].append(
                {
                    "owner": rng.randrange(6),
                    "priority": 10 if urgent else rng.randint(-2, 2),
                    "gpus": rng.choice([1, 2, 4, 8]),
                    "ticks": rng.randint(3, 8) if urgent else rng.randint(10, 40),
                    "max_duration": rng.choice([3600, 7200, 14400]),
                    "urgent": urgent,
                }
            )
    return arrivals


def _budget_overruns() -> int:
    from simulations.budgets import budget_usage

    overruns = 0
    for usage in budget_usage():
        if usage["gpu_cap"] is not None and usage["gpus_in_use"] > usage["gpu_cap"]:
            overruns += 1
        limit = usage["monthly_budget"]
        if limit is not None and usage["spent"] + usage["reserved"] > limit + Decimal("0.01"):
            overruns += 1
    return overruns


def _double_booked_now() -> int:
    from django.db.models import Count

    from simulations.models import Simulation

    return (
        Simulation.objects.filter(status__in=Simulation.ACTIVE)
        .values("machine_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .count()
    )


def priority_round(preemption: bool, arrivals: dict[int, list[dict]]) -> dict:
    """One run of the scenario on a fresh fleet: 12 machines, six owners with budgets."""
    from django.contrib.auth import get_user_model

    from machines.models import Machine
    from simsched.exceptions import ConflictError
    from simulations import services
    from simulations.housekeeping import scheduler_pass
    from simulations.models import Budget, Simulation

    Simulation.objects.all().delete()
    Budget.objects.all().delete()
    Machine.objects.all().delete()
    users = []
    for i in range(6):
        user, _ = get_user_model().objects.get_or_create(username=f"bench-owner-{i}")
        users.append(user)
        Budget.objects.create(user=user, gpu_cap=16, monthly_budget=Decimal(400 + 100 * i))
    Machine.objects.bulk_create(
        Machine(
            name=f"prio-{i:02d}",
            cpu="bench cpu",
            memory=512,
            cpu_cores=64,
            gpu_count=8 if i % 2 else 4,
            hourly_cost=Decimal("24.00") if i % 2 else Decimal("12.00"),
        )
        for i in range(12)
    )
    runs: dict[int, dict] = {}  # simulation id -> its arrival and how long it runs
    waits, overruns, double = [], 0, 0
    for tick in range(PRIORITY_TICKS):
        for job in arrivals.get(tick, []):
            simulation = services.simulation_create(
                name=f"t{tick}",
                owner=users[job["owner"]],
                priority=job["priority"],
                required_gpus=job["gpus"],
                required_memory=8,
                max_duration=job["max_duration"],
                preemptible=preemption and not job["urgent"],
                preempt_grace=0,
            )
            runs[simulation.pk] = {**job, "arrived": tick, "ran": 0, "placed": None}
        scheduler_pass()
        for simulation in Simulation.objects.filter(status__in=Simulation.ACTIVE):
            run = runs[simulation.pk]
            if run["placed"] is None:
                run["placed"] = tick
                if run["urgent"]:
                    waits.append(tick - run["arrived"])
            try:
                if simulation.status == Simulation.Status.SCHEDULED:
                    services.simulation_start(simulation=simulation)
                elif services.simulation_heartbeat(simulation=simulation).preempt:
                    run["placed"] = None if not run["urgent"] else run["placed"]
                    services.simulation_fail(simulation=simulation, reason="SIGTERM")
                else:
                    run["ran"] += 1
                    if run["ran"] >= run["ticks"]:
                        services.simulation_finish(simulation=simulation)
            except ConflictError:
                pass
        overruns += _budget_overruns()
        double += _double_booked_now()
    urgent_total = sum(1 for r in runs.values() if r["urgent"])
    return {
        "preemption": preemption,
        "waits": waits,
        "urgent": urgent_total,
        "placed_urgent": len(waits),
        "overruns": overruns,
        "double": double,
        "preemptions": sum(
            Simulation.objects.filter(preemptions__gt=0).values_list("preemptions", flat=True)
        ),
        "finished": Simulation.objects.filter(status=Simulation.Status.FINISHED).count(),
    }


def priorities_main(no_results: bool) -> int:
    common.fresh_database()
    common.django_setup()
    from simsched.broadcast import sent_in_the_background

    arrivals = _priority_arrivals()
    rounds = []
    started = time.perf_counter()
    with sent_in_the_background():
        for _ in range(PRIORITY_ROUNDS):
            for preemption in (True, False):  # alternating, the same arrivals
                rounds.append(priority_round(preemption, arrivals))
    elapsed = time.perf_counter() - started
    common.drop_database()

    def row(preemption: bool) -> str:
        mine = [r for r in rounds if r["preemption"] == preemption]
        waits = sorted(w for r in mine for w in r["waits"])
        return (
            f"| {'with' if preemption else 'without'} preemption | "
            f"{common.percentile(waits, 50):.0f} | {common.percentile(waits, 95):.0f} | "
            f"{sum(r['placed_urgent'] for r in mine)} / {sum(r['urgent'] for r in mine)} | "
            f"{sum(r['preemptions'] for r in mine)} | {sum(r['finished'] for r in mine)} | "
            f"**{sum(r['double'] for r in mine)}** | **{sum(r['overruns'] for r in mine)}** |"
        )

    total = sum(len(v) for v in arrivals.values())
    lines = [
        "| mode | urgent wait p50 (ticks) | p95 (ticks) | urgent placed / arrived | "
        "preemptions | runs finished | double bookings | budget overruns |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        row(True),
        row(False),
        "",
        f"{PRIORITY_ROUNDS} rounds of each mode, alternating, each {PRIORITY_TICKS} ticks of "
        f"`scheduler_pass()` over 12 machines (4 and 8 GPUs) and the same {total} arrivals "
        "(20% urgent: priority 10, 3-8 ticks; the rest priority -2..2, 10-40 ticks, "
        "preemptible in the first mode, grace 0), six owners each with a 16-GPU cap and a "
        "$400-900 monthly budget against which every run's max_duration is reserved. "
        "After each pass the bench's agents start what was placed, finish what has run its "
        "ticks, and answer a preempting heartbeat by reporting failure (as the agent does after "
        "SIGTERM), which requeues the run. Double bookings (machines with two active "
        "simulations) and budget overruns (GPUs in use over the cap, spend + reservations over "
        f"the budget) are counted after every tick. Wall time {elapsed:.0f} s.",
    ]
    if not no_results:
        common.write_section(
            "scheduler-priorities",
            "Mixed priorities, budgets and preemption (bench/scheduler.py --scenario priorities)",
            "SIMSCHED_BENCH_DB=simsched_bench_guards .venv/bin/python bench/scheduler.py "
            "--scenario priorities",
            "\n".join(lines),
        )
    print("\n".join(lines))
    return 0 if all(r["double"] == 0 and r["overruns"] == 0 for r in rounds) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--simulations", type=int, default=10_000)
    parser.add_argument("--machines", type=int, default=500)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--no-results", action="store_true")
    parser.add_argument("--scenario", choices=["contention", "priorities"], default="contention")
    args = parser.parse_args()
    if args.scenario == "priorities":
        return priorities_main(args.no_results)

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
