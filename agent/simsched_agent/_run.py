"""The run: what training code holds. `log()` only appends to a bounded in-memory queue; one
background thread sends batches, spools what the server does not take, and replays the spool
when the server answers again (the shape of sentry-python's worker and transport)."""

import atexit
import collections
import logging
import os
import random
import signal
import threading
import time
import weakref
from itertools import repeat, starmap
from pathlib import Path

from simsched_agent._encoder import EncoderProcess
from simsched_agent._http import Api
from simsched_agent._points import Counters, Sender, plain
from simsched_agent._spool import Spool, claim_orphans, replay_file

logger = logging.getLogger("simsched_agent")
_now = time.time

SEND_EVERY_SECONDS = 0.5
BATCH_STEPS = 20_000  # a batch leaves early once this many steps are queued
MAX_QUEUED_STEPS = 200_000
MAX_BACKOFF_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 10.0


class Run:
    """A simulation's metrics, reported from inside its training process.

    `log(step, loss=0.31, lr=3e-4)` or `log(step, {"val/loss": 0.4})` never blocks and never
    raises for a server problem: values go to a bounded in-memory queue that a background
    thread sends in batches (every 0.5 s, or sooner when many are queued). When the server is
    unreachable the batches go to an append-only spool file and are replayed, in order, when it
    answers again; writes are idempotent by (metric, step), so a replay stores nothing twice.
    Values logged while the queue is full (the sender cannot even keep up with the disk) are
    dropped and counted in `stats["dropped"]`, never raised. NaN and ±Infinity are sent as
    such, one by one, so the server can stop a diverged run; the server refuses to store them,
    which `stats["rejected"]` counts.

    `finish(timeout)` (also on `with` exit, at interpreter exit and on SIGTERM) sends what is
    left for at most `timeout` seconds, then leaves the rest in the spool for `simsched-agent
    sync`. Create runs with `simsched_agent.init()`.
    """

    def __init__(
        self,
        *,
        url: str,
        token: str,
        simulation_id: int,
        spool_dir: str | os.PathLike,
        flush_timeout: float = 30.0,
        max_queued_steps: int = MAX_QUEUED_STEPS,
        resume_step: int | None = None,
    ):
        self.simulation_id = simulation_id
        self.resume_step = resume_step
        self.flush_timeout = flush_timeout
        self._counters = Counters()
        self._queue: collections.deque = collections.deque()
        self._room = max_queued_steps  # 0 once finished
        self._dropped = 0
        self._wake = threading.Event()
        self._worker = _Worker(
            queue=self._queue,
            wake=self._wake,
            api=Api(url, token, timeout=REQUEST_TIMEOUT_SECONDS),
            simulation_id=simulation_id,
            counters=self._counters,
            spool=Spool(Path(spool_dir), simulation_id),
        )
        self._worker.start()
        _register_exit(self)

    def log(self, step: int, values=None, /, **metrics) -> None:
        """Queue `metrics` (and/or the `values` mapping) at `step`; returns at once."""
        # Every line here is paid at every step of the training loop: one tuple on a deque
        # (which needs no lock of ours), nothing per value; the sender checks and converts.
        if values is not None:
            try:
                metrics = {**values, **metrics} if metrics else dict(values)
            except (TypeError, ValueError):  # not a mapping: counted, never raised
                self._dropped += 1
                return
        queue = self._queue
        queued = len(queue)
        if queued >= self._room:
            self._dropped += 1
            return
        queue.append((step, metrics, _now()))
        if queued == BATCH_STEPS:
            self._wake.set()

    def finish(self, timeout: float | None = None) -> bool:
        """Send what is queued or spooled for at most `timeout` seconds (default: the run's
        `flush_timeout`), then spool the rest; True when the server has everything. No request
        starts after `timeout`, so this returns within `timeout` plus the one request in
        flight then, which its own timeout bounds (REQUEST_TIMEOUT_SECONDS, 10 s). Safe to call
        more than once (a later call keeps the earliest deadline)."""
        self._room = 0
        timeout = self.flush_timeout if timeout is None else timeout
        deadline = self._worker.stop(deadline=time.monotonic() + max(timeout, 0.0))
        self._wake.set()
        self._worker.join(max(0.0, deadline - time.monotonic()) + REQUEST_TIMEOUT_SECONDS + 1)
        return self._worker.all_delivered

    @property
    def stats(self) -> dict:
        """Values stored, duplicates, rejected (non-finite or invalid), dropped, spooled."""
        counters = self._counters.as_dict()
        counters["dropped"] += self._dropped
        counters["queued_steps"] = len(self._queue)
        counters["spool"] = str(self._worker.spool.path)
        return counters

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc_info) -> None:
        self.finish()


class _Worker(threading.Thread):
    def __init__(self, *, queue, wake, api, simulation_id, counters, spool):
        super().__init__(name="simsched-sender", daemon=True)
        self.queue, self.wake, self.api, self.counters, self.spool = (
            queue,
            wake,
            api,
            counters,
            spool,
        )
        self.simulation_id = simulation_id
        self.encoder = EncoderProcess(timeout=REQUEST_TIMEOUT_SECONDS)
        self.sender = Sender(
            api, simulation_id, counters, timeout=REQUEST_TIMEOUT_SECONDS, encoder=self.encoder
        )
        self.orphans = claim_orphans(spool.directory, simulation_id)
        self.deadline: float | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.all_delivered = False
        self.errors = 0

    def stop(self, *, deadline: float) -> float:
        """Finish by `deadline` (or an earlier one already set); returns the one in force."""
        if self.deadline is None or deadline < self.deadline:
            self.deadline = self.sender.deadline = deadline
        return self.deadline

    def run(self) -> None:
        while True:
            if self.deadline is None:
                self.wake.wait(SEND_EVERY_SECONDS)
                self.wake.clear()
            items = self._drain()
            try:
                self._cycle(items)
            except Exception:  # noqa: BLE001 - a guest in the training process must not crash it
                self._failed_cycle(items)
            if self.deadline is not None and (self._done() or self._past_deadline()):
                break
        self._spill(self._drain())
        self.all_delivered = self._done()
        self.spool.close()
        self.api.close()
        self.encoder.close()

    def _failed_cycle(self, items: list) -> None:
        """A bug of ours, not a server problem: keep the cycle's values (spooled, sent again
        later; writes are idempotent), back off, and go on sending."""
        self.errors += 1
        if self.errors == 1:
            logger.exception("simsched: sending failed; the values are spooled and retried")
        try:
            self._spill(items)
        except Exception:  # noqa: BLE001
            self.counters.dropped += sum(len(v) if type(v) is dict else 1 for _, v, _ in items)
        self._offline()

    def _cycle(self, items: list) -> None:
        if time.monotonic() < self.retry_at:
            self._spill(items)
            if self.deadline is not None:  # finishing: wait for the retry, not beyond the end
                time.sleep(max(0.0, min(self.retry_at, self.deadline) - time.monotonic()))
            return
        if not self._replay() or self._past_deadline():
            self._spill(items)
            return
        if items and not self.sender.send(items):
            self._spill(items, counted=True)
            self._offline()
            return
        self.failures = 0

    def _replay(self) -> bool:
        """Older values first: orphaned spools of this simulation, then our own."""
        while self.orphans:
            if not replay_file(self.orphans[0], lambda _id: self.sender):
                return self._offline()
            self.orphans.pop(0)
        while self.spool.pending and not self._past_deadline():
            items, end = self.spool.next_batch()
            if items and not self.sender.send(items):
                return self._offline()
            self.counters.spooled_steps -= len(items)
            self.spool.delivered(end)
        return not self.spool.pending

    def _offline(self) -> bool:
        """Back off exponentially, with jitter, up to MAX_BACKOFF_SECONDS."""
        self.failures += 1
        delay = min(MAX_BACKOFF_SECONDS, 0.25 * 2**self.failures)
        self.retry_at = time.monotonic() + delay * random.uniform(0.5, 1.0)
        return False

    def _drain(self) -> list:
        """What is queued now, oldest first, popped by a C loop (log() may append meanwhile)."""
        return list(starmap(self.queue.popleft, repeat((), len(self.queue))))

    def _spill(self, items: list, *, counted: bool = False) -> None:
        """Append `items` to the spool; `counted`: the sender already counted its invalid
        values."""
        items, rejected = plain(items)
        if not counted:
            self.counters.rejected += rejected
        if not items:
            return
        if self.spool.append(items):
            self.counters.spooled_steps += len(items)
        else:
            self.counters.dropped += sum(len(values) for _, values, _ in items)

    def _done(self) -> bool:
        return not self.queue and not self.spool.pending and not self.orphans

    def _past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


# --- exit and SIGTERM -----------------------------------------------------------------------

_runs: "weakref.WeakSet[Run]" = weakref.WeakSet()
_previous_sigterm = None
_installed = False


def _register_exit(run: Run) -> None:
    global _installed, _previous_sigterm
    _runs.add(run)
    if _installed:
        return
    _installed = True
    atexit.register(_finish_all)
    if threading.current_thread() is threading.main_thread():
        try:
            _previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):  # not allowed here (embedded interpreter)
            _previous_sigterm = None


def _finish_all() -> None:
    for run in list(_runs):
        run.finish()


def _on_sigterm(signum, frame) -> None:
    """Flush (bounded by each run's flush_timeout), then do what SIGTERM did before."""
    _finish_all()
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
