"""One OS process of test_concurrency: it assigns and finishes work against the test database,
the way scheduler and agent processes do in production. Kept free of Django imports at module
level: the process imports it before `django.setup()`."""

import logging
import os
import random
import time

BATCH = 20
IDLE_CHECKS_BEFORE_DONE = 40
IDLE_SLEEP = 0.05


class _Errors(logging.Handler):
    """Collects errors logged anywhere, e.g. a failed on-commit assignment (run `robust`)."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(self.format(record))


def run(database_url: str, seed: int, results) -> None:
    os.environ["DATABASE_URL"] = database_url
    # Broadcasts stay in-process: with Redis they double the run time (one async_to_sync
    # round trip per event) and have no say in who gets which machine.
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "simsched.settings")
    import django

    django.setup()
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    logging.getLogger("simulations.scheduler").setLevel(logging.WARNING)
    try:
        outcome = _work(random.Random(seed))
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
        outcome = {"started": [], "finished": [], "conflicts": 0, "crash": repr(exc)}
    finally:
        from django.db import connection

        connection.close()
    results.put({**outcome, "errors": errors.messages})


def _work(rng: random.Random) -> dict:
    from simsched.exceptions import ConflictError
    from simulations import services
    from simulations.models import Simulation
    from simulations.scheduler import assign_pending

    started, finished, conflicts = [], [], 0
    active = Simulation.objects.filter(status__in=Simulation.ACTIVE)
    idle = 0
    while idle < IDLE_CHECKS_BEFORE_DONE:
        assign_pending()
        ids = list(active.values_list("id", flat=True)[:200])
        if not ids:
            # Nothing visible may only mean another process holds every free machine in an
            # uncommitted assignment (SKIP LOCKED hides them): stop only after a quiet while.
            idle = 0 if assign_pending() else idle + 1
            time.sleep(IDLE_SLEEP)
            continue
        idle = 0
        for simulation_id in rng.sample(ids, min(BATCH, len(ids))):
            simulation = Simulation(pk=simulation_id)
            try:
                simulation = services.simulation_start(simulation=simulation)
                started.append(simulation_id)
            except ConflictError:
                pass  # already running (or ended): another process got there first
            try:
                services.simulation_finish(simulation=simulation)
                finished.append(simulation_id)
            except ConflictError:
                conflicts += 1
    return {"started": started, "finished": finished, "conflicts": conflicts, "crash": None}
