import logging
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import DatabaseError, close_old_connections

from simsched.broadcast import sent_in_the_background
from simulations.scheduler import assign_pending, reap_silent

logger = logging.getLogger("simsched.scheduler")


class Command(BaseCommand):
    help = (
        "Run the scheduler's periodic part: fail or requeue simulations whose agent went silent, "
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
            reaped = reap_silent()
            assigned = assign_pending()
        except DatabaseError as exc:  # the database restarts: try again next pass
            logger.warning("scheduler pass failed: %s", exc)
            return
        if reaped["requeued"] or reaped["failed"] or assigned:
            self.stdout.write(
                f"requeued {len(reaped['requeued'])}, failed {len(reaped['failed'])}, "
                f"assigned {len(assigned)}"
            )
