import logging
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import DatabaseError, close_old_connections

from simsched.broadcast import sent_in_the_background
from simulations.housekeeping import scheduler_pass

logger = logging.getLogger("simsched.scheduler")


class Command(BaseCommand):
    help = (
        "Run the scheduler's periodic part: fail or requeue simulations whose agent went silent, "
        "time out runs past max_duration, fail stalled ones, preempt for higher-priority work, "
        "and assign waiting simulations (a safety net; assignment also runs on every change)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--interval",
            type=float,
            default=settings.SIMSCHED_SCHEDULER_INTERVAL,
            help="Seconds between passes (default SIMSCHED_SCHEDULER_INTERVAL).",
        )
        parser.add_argument("--once", action="store_true", help="Run one pass and exit.")

    def handle(self, *args, interval, once, **options):
        self.stdout.write(
            f"scheduler: every {interval}s, heartbeat timeout "
            f"{settings.SIMSCHED_HEARTBEAT_TIMEOUT}s, {settings.SIMSCHED_MAX_RETRIES} retries"
        )
        with sent_in_the_background():
            while True:
                self._pass()
                if once:
                    return
                time.sleep(interval)

    def _pass(self) -> None:
        close_old_connections()
        try:
            done = scheduler_pass()
        except DatabaseError as exc:  # the database restarts: try again next pass
            logger.warning("scheduler pass failed: %s", exc)
            return
        if any(done.values()):
            self.stdout.write(", ".join(f"{step} {len(ids)}" for step, ids in done.items()))
