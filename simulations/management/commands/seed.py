"""Seed a realistic fleet, simulations in every status, and training-like loss curves.

Idempotent: machines are matched by name, simulations by name; points are stored by step,
so running it again adds nothing that is already there.
"""

import random
import sys
import time
from datetime import timedelta
from decimal import Decimal

from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from convergence.curves import LossCurve, TrainingSeries
from convergence.services import MAX_BATCH_POINTS, Point, points_ingest
from machines.models import Machine
from simsched.broadcast import sent_in_the_background
from simulations.guards import REASON_NAN
from simulations.models import Simulation
from simulations.scheduler import assign_pending
from simulations.selectors import fits

# (name prefix, cpu, gpu, gpu_count, cpu_cores, memory GB, USD/hour)
MACHINE_TYPES = [
    ("h100x8", "Intel Xeon Platinum 8488C", "8x NVIDIA H100 80GB", 8, 192, 2048, "98.32"),
    ("a100x8", "AMD EPYC 7R13", "8x NVIDIA A100 40GB", 8, 96, 1152, "32.77"),
    ("l40sx4", "AMD EPYC 7R13", "4x NVIDIA L40S 48GB", 4, 48, 384, "15.07"),
    ("a10gx4", "AMD EPYC 7R32", "4x NVIDIA A10G 24GB", 4, 48, 192, "5.67"),
    ("a10gx1", "AMD EPYC 7R32", "1x NVIDIA A10G 24GB", 1, 16, 64, "1.62"),
    ("cpu192", "Intel Xeon Platinum 8488C", "", 0, 192, 384, "8.57"),
]
WORKLOADS = [
    ("llama-7b-sft", 8, 1024),
    ("vit-b16-imagenet", 4, 256),
    ("diffusion-unet-cosine", 8, 512),
    ("ppo-humanoid", 1, 32),
    ("gnn-qm9", 1, 48),
    ("bert-large-mlm", 4, 192),
    ("climate-emulator", 8, 1500),
    ("protein-fold-ft", 4, 300),
    ("wave-pde-cpu", 0, 256),
]
STATUS_MIX = [  # share of simulations in each final or queued state
    (Simulation.Status.FINISHED, 0.5),
    (Simulation.Status.FAILED, 0.1),
    (Simulation.Status.CANCELLED, 0.1),
    (Simulation.Status.PENDING, 0.3),
]
SEED = 20261123


class ProgressBar:
    """A one-line progress bar on stderr, for work that takes more than a moment."""

    def __init__(self, total: int, label: str, stream=sys.stderr, width: int = 30):
        self.total, self.label, self.stream, self.width = max(total, 1), label, stream, width
        self.done, self.started = 0, time.monotonic()

    def advance(self, amount: int) -> None:
        self.done += amount
        filled = int(self.width * self.done / self.total)
        rate = self.done / max(time.monotonic() - self.started, 1e-9)
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
            f"{self.done:,}/{self.total:,} ({rate:,.0f}/s)"
        )
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")


class Command(BaseCommand):
    help = "Create a realistic fleet, simulations in every status and their loss curves."

    def add_arguments(self, parser):
        parser.add_argument("--machines", type=int, default=18, help="Machines in the fleet.")
        parser.add_argument("--simulations", type=int, default=40, help="Simulations to create.")
        parser.add_argument(
            "--points", type=int, default=3000, help="Points in a finished simulation's curve."
        )
        parser.add_argument("--running", type=int, default=None, help="Running simulations.")

    def handle(self, *args, **options):
        with sent_in_the_background():  # seeding must not wait on Redis once per batch
            self._seed(**options)

    def _seed(self, *, machines, simulations, points, running, **options):
        rng = random.Random(SEED)
        fleet = self._fleet(machines)
        running = min(
            running if running is not None else max(simulations // 10, 1), len(fleet) // 2
        )
        created = self._simulations(simulations, running, fleet, rng, points)
        total = sum(self._curve_length(s, points) for s in created)
        bar = ProgressBar(total, "points") if total >= 100_000 else None
        for simulation in created:
            self._curve(simulation, self._curve_length(simulation, points), bar)
        if bar:
            bar.close()
        assigned = assign_pending()
        self.stdout.write(
            self.style.SUCCESS(
                f"Fleet: {len(fleet)} machines. New simulations: {len(created)}. "
                f"New points: {total:,}. Assigned now: {len(assigned)}."
            )
        )

    def _fleet(self, count: int) -> list[Machine]:
        fleet = []
        for index in range(count):
            prefix, cpu, gpu, gpus, cores, memory, cost = MACHINE_TYPES[index % len(MACHINE_TYPES)]
            machine, _ = Machine.objects.get_or_create(
                name=f"{prefix}-{index // len(MACHINE_TYPES) + 1:02d}",
                defaults={
                    "cpu": cpu,
                    "gpu": gpu,
                    "gpu_count": gpus,
                    "cpu_cores": cores,
                    "memory": memory,
                    "hourly_cost": Decimal(cost),
                },
            )
            fleet.append(machine)
        if count >= 6:  # one machine in maintenance, as in any real fleet
            Machine.objects.filter(pk=fleet[-1].pk, status=Machine.Status.AVAILABLE).update(
                status=Machine.Status.MAINTENANCE
            )
        return fleet

    def _status_for(self, index: int, total: int, running: int) -> str:
        if index < running:
            return Simulation.Status.RUNNING
        position = (index - running) / max(total - running, 1)
        cumulative = 0.0
        for status, share in STATUS_MIX:
            cumulative += share
            if position < cumulative:
                return status
        return Simulation.Status.PENDING

    @transaction.atomic
    def _simulations(self, count, running, fleet, rng, points) -> list[Simulation]:
        now = timezone.now()
        free = [m for m in fleet if m.status == Machine.Status.AVAILABLE]
        created = []
        for index in range(count):
            workload, gpus, memory = WORKLOADS[index % len(WORKLOADS)]
            name = f"{workload}-{index + 1:03d}"
            if Simulation.objects.filter(name=name).exists():
                continue
            status = self._status_for(index, count, running)
            simulation = Simulation(
                name=name,
                status=status,
                priority=rng.choice([0, 0, 0, 10, 50]),
                required_gpus=gpus if index % 17 else 16,  # a few ask for more than any machine
                required_memory=memory,
                required_cpu_cores=rng.choice([0, 8, 32]),
                created_at=now - timedelta(hours=rng.uniform(1, 72)),
            )
            if status != Simulation.Status.PENDING:
                if status == Simulation.Status.RUNNING:
                    fitting = [m for m in free if fits(m, simulation)]
                    if not fitting:
                        simulation.status = status = Simulation.Status.PENDING
                if status != Simulation.Status.PENDING:
                    machine = self._place(simulation, status, fleet, free, rng, now, points)
                    simulation.machine = machine
            created.append(simulation)
        Simulation.objects.bulk_create(created)
        busy = [s.machine_id for s in created if s.status == Simulation.Status.RUNNING]
        Machine.objects.filter(pk__in=busy).update(status=Machine.Status.BUSY)
        return list(Simulation.objects.filter(name__in=[s.name for s in created]))

    def _place(self, simulation, status, fleet, free, rng, now, points) -> Machine:
        if status == Simulation.Status.RUNNING:
            machine = next(m for m in free if fits(m, simulation))
            free.remove(machine)
            simulation.scheduled_at = now - timedelta(minutes=rng.uniform(5, 90))
            simulation.started_at = simulation.scheduled_at + timedelta(seconds=30)
            simulation.last_heartbeat_at = now
        else:
            fitting = [m for m in fleet if fits(m, simulation)] or fleet
            machine = rng.choice(fitting)
            # Every time in the past: the run ended at least a minute ago.
            window = now - timedelta(minutes=1) - simulation.created_at
            simulation.scheduled_at = simulation.created_at + window * rng.uniform(0.01, 0.1)
            simulation.started_at = simulation.scheduled_at + timedelta(seconds=45)
            left = now - timedelta(minutes=1) - simulation.started_at
            simulation.finished_at = simulation.started_at + min(
                timedelta(hours=rng.uniform(0.2, 6)), left * rng.uniform(0.5, 1.0)
            )
            if status == Simulation.Status.FAILED:
                self._fail(simulation, rng, next_step=self._curve_length(simulation, points))
        simulation.hourly_cost = machine.hourly_cost
        return machine

    @staticmethod
    def _fail(simulation: Simulation, rng, *, next_step: int) -> None:
        """Why a seeded run failed, consistent with its points: a NaN is the step after its
        last stored one, recorded as the nan guard records it."""
        why = rng.choice(["oom", "nan", "lost"])
        if why == "nan":
            reason = REASON_NAN.format(metric="loss", step=next_step)
            simulation.stopped_by = Simulation.StoppedBy.NAN
            simulation.stop_step, simulation.stop_reason = next_step, reason
        else:
            reason = {"oom": "CUDA out of memory.", "lost": "Node lost (spot reclaim)."}[why]
        simulation.failure_reason = reason

    @staticmethod
    def _curve_length(simulation: Simulation, points: int) -> int:
        return {
            Simulation.Status.FINISHED: points,
            Simulation.Status.RUNNING: points // 2,
            Simulation.Status.FAILED: points // 3,
            Simulation.Status.CANCELLED: points // 4,
        }.get(simulation.status, 0)

    def _curve(self, simulation: Simulation, length: int, bar: ProgressBar | None) -> None:
        curve = LossCurve(simulation.pk, total_steps=max(length, 1))
        series = TrainingSeries(curve, total_steps=length)
        start = simulation.started_at or timezone.now()
        # The points span the run: from its start to its end (or to now, while it runs).
        end = simulation.finished_at or timezone.now()
        per_step = max(end - start, timedelta(seconds=1)) / max(length, 1)
        batch = []
        for step in range(length):
            stamp = start + per_step * step
            for metric, value in series.values(step).items():
                batch.append(Point(step, value, stamp, metric))
            if len(batch) >= MAX_BATCH_POINTS - 4 or step == length - 1:
                points_ingest(simulation_id=simulation.pk, points=batch)
                if bar:
                    bar.advance(sum(p.metric == "loss" for p in batch))
                batch = []
