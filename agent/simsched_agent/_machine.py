"""The machine agent: claims the machine's simulation, runs its command as a child in a process
group of its own, heartbeats, ships the child's output lines, and reports how it ended.

It keeps what it is doing in a state file, and the child's output and exit status in files
(not pipes), so that when the agent itself is killed and restarted it adopts a child that is
still running, or reports how one that ended meanwhile did; a simulation the server thinks runs
here with nothing on the machine is failed, clearly, so the machine never stays busy for
nothing."""

import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from simsched_agent._http import Api, Unreachable, retryable, server_url
from simsched_agent._points import Counters, Sender
from simsched_agent._spool import claim_orphans, replay_file

logger = logging.getLogger("simsched_agent.machine")

TICK_SECONDS = 0.1
SHIP_EVERY_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 15.0
FINAL_SHIP_SECONDS = 30.0
READ_WINDOW_BYTES = 64 * 1024
MAX_LINE_CHARS = 8192
STDERR_TAIL_LINES = 5
MAX_REASON = 500
STREAMS = ("stdout", "stderr")
MAX_LINES_PER_REQUEST = 1000  # the server's limit (simulations/logs.py): more is refused
MAX_LINES_PER_STREAM = MAX_LINES_PER_REQUEST // len(STREAMS)


def default_state_dir(url: str, token: str) -> Path:
    """One directory per (server, machine token): several agents may share a host. The URL
    counts as the client reaches it (`http://h:8000/` is `http://h:8000`)."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    key = hashlib.sha256(f"{server_url(url)}|{token}".encode()).hexdigest()[:12]
    return base / "simsched-agent" / key


def _process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), so a reused pid is not mistaken for ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start_time: str | None) -> bool:
    """`pid` runs and is the process that started at `start_time` (not a zombie)."""
    current = _process_start_time(pid)
    if current is None:  # no such process, or no /proc to tell
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return not Path("/proc/self").exists()
    if start_time is not None and current != start_time:
        return False  # the pid now belongs to someone else
    try:  # a zombie has ended
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class _Child:
    """The launched command (through simsched_agent._launch), ours or adopted."""

    def __init__(self, pid: int, start_time: str | None, run_dir: Path, popen=None):
        self.pid, self.start_time, self.run_dir, self.popen = pid, start_time, run_dir, popen

    @classmethod
    def launch(cls, command: list[str], env: dict, cwd: str | None, run_dir: Path) -> "_Child":
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "exit.json").unlink(missing_ok=True)
        launcher = [sys.executable, "-m", "simsched_agent._launch", str(run_dir / "exit.json")]
        with open(run_dir / "stdout.log", "wb") as out, open(run_dir / "stderr.log", "wb") as err:
            popen = subprocess.Popen(
                [*launcher, "--", *command],
                cwd=cwd or None,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        return cls(popen.pid, _process_start_time(popen.pid), run_dir, popen)

    def exited(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is not None
        return not _alive(self.pid, self.start_time)

    def signal_group(self, sig: int) -> None:
        """Signal the child's process group, only while that group can be nothing but ours."""
        if not self._group_is_ours():
            logger.warning("pid %s is no longer the command's: its group is left alone", self.pid)
            return
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _group_is_ours(self) -> bool:
        """Our own launcher (we reap it, so its pid is not reused under us); or an adopted one
        whose pid still has the start time recorded at launch. When no process has the pid any
        more, a group of that number can only be what is left of ours: Linux does not reuse a
        pid while a process group still bears it. Without /proc nothing can be confirmed."""
        if self.popen is not None:
            return True
        current = _process_start_time(self.pid)
        if current is not None:
            return self.start_time is not None and current == self.start_time
        return Path("/proc/self").exists() and not Path(f"/proc/{self.pid}").exists()

    def outcome(self) -> dict | None:
        """{"exit_code": n, "signal": None} or {"exit_code": None, "signal": n}; None when
        nothing says how it ended (an adopted child killed with its launcher)."""
        try:
            return json.loads((self.run_dir / "exit.json").read_text())
        except (OSError, ValueError):
            pass
        if self.popen is not None and self.popen.returncode is not None:
            code = self.popen.returncode
            return {"exit_code": None, "signal": -code} if code < 0 else {"exit_code": code}
        return None

    def stderr_tail(self) -> list[str]:
        try:
            with open(self.run_dir / "stderr.log", "rb") as err:
                err.seek(max(0, err.seek(0, os.SEEK_END) - 4096))
                data = err.read()
        except OSError:
            return []
        lines = [line.strip() for line in terminal_lines(data) if line.strip()]
        return lines[-STDERR_TAIL_LINES:]


def describe(outcome: dict | None, tail: list[str]) -> str:
    """The failure reason: how it ended, then its last stderr lines."""
    if outcome is None:
        how = "the process ended while the agent was down, without recording how"
    elif outcome.get("signal"):
        number = outcome["signal"]
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown"
        how = f"killed by signal {number} ({name})"
    else:
        how = f"exit code {outcome.get('exit_code')}"
    if outcome and outcome.get("error"):
        how += f": {outcome['error']}"
    if tail:
        how += "; stderr: " + " | ".join(line[:200] for line in tail)
    return how if len(how) <= MAX_REASON else how[: MAX_REASON - 1] + "…"


class _LogShipper:
    """Ships the child's output files as numbered lines. Before a batch is sent its byte range
    is written to the state file, so after a restart the same bytes are read again and get the
    same sequence numbers: the server stores each line once. The first number follows an
    earlier attempt's lines; while the server cannot say which that is (`seq` None), nothing
    is sent, so no line takes a number already stored."""

    def __init__(self, agent: "MachineAgent", simulation_id: int, run_dir: Path, state: dict):
        self.agent, self.simulation_id, self.run_dir, self.state = (
            agent,
            simulation_id,
            run_dir,
            state,
        )
        state.setdefault("offsets", {stream: 0 for stream in STREAMS})
        state.setdefault("seq", 0)
        state.setdefault("sending", None)
        self.retry_at = 0.0
        self.failures = 0
        self.next_at = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        return now >= self.next_at and now >= self.retry_at

    def ship(self, *, final: bool = False) -> bool | None:
        """Send one batch: True sent, False failed (retry later), None nothing to send."""
        self.next_at = time.monotonic() + SHIP_EVERY_SECONDS
        state = self.state
        if state["sending"] is None:
            ends = {s: self._window_end(s, final=final) for s in STREAMS}
            if ends == state["offsets"]:
                return None
            state["sending"] = ends
            self.agent.save_state()
        if state["seq"] is None:
            state["seq"] = self.agent._next_log_seq(self.simulation_id)
            if state["seq"] is None:
                return self._failed()
            self.agent.save_state()
        lines = self._lines(state["offsets"], state["sending"])
        if lines:
            answer = self.agent.call(
                "POST", f"/simulations/{self.simulation_id}/logs", {"lines": lines}
            )
            if answer is None or retryable(answer[0]):
                return self._failed()
            if answer[0] != 200:
                logger.warning("log lines refused (%s); skipping them", answer[0])
        self.failures = 0
        state["offsets"], state["sending"] = state["sending"], None
        state["seq"] += len(lines)
        self.agent.save_state()
        return True

    def _failed(self) -> bool:
        self.failures += 1
        delay = min(MAX_BACKOFF_SECONDS, 0.25 * 2**self.failures)
        self.retry_at = time.monotonic() + delay * random.uniform(0.5, 1.0)
        return False

    def ship_rest(self) -> bool:
        """After the child ended: everything, including a last line without a newline, for
        at most FINAL_SHIP_SECONDS; False when some is left (its range stays in the state, to
        be shipped once the server is back: see MachineAgent._forget)."""
        deadline = time.monotonic() + FINAL_SHIP_SECONDS
        while time.monotonic() < deadline:
            shipped = self.ship(final=True)
            if shipped is None:
                return True
            if shipped is False:
                time.sleep(max(0.0, min(self.retry_at, deadline) - time.monotonic()))
        logger.warning(
            "simulation %s: server unreachable, last log lines not shipped yet",
            self.simulation_id,
        )
        return False

    def _window_end(self, stream: str, *, final: bool) -> int:
        start = self.state["offsets"][stream]
        try:
            with open(self.run_dir / f"{stream}.log", "rb") as file:
                file.seek(start)
                data = file.read(READ_WINDOW_BYTES)
        except OSError:
            return start
        cut, lines = 0, 0
        for index, byte in enumerate(data):
            if byte == 10:  # b"\n"
                cut, lines = index + 1, lines + 1
                if lines >= MAX_LINES_PER_STREAM:
                    break
        if cut == 0 and (final or len(data) == READ_WINDOW_BYTES):
            cut = len(data)  # a last line without its newline, or one longer than the window
        return start + cut

    def _lines(self, start: dict, end: dict) -> list[dict]:
        lines, seq = [], self.state["seq"]
        for stream in STREAMS:
            if end[stream] <= start[stream]:
                continue
            with open(self.run_dir / f"{stream}.log", "rb") as file:
                file.seek(start[stream])
                data = file.read(end[stream] - start[stream])
            for line in terminal_lines(data):
                lines.append({"seq": seq, "stream": stream, "line": line})
                seq += 1
        return lines


def terminal_lines(data: bytes) -> list[str]:
    """`data` as lines the way a terminal shows them: split on "\n" only (the count
    _window_end makes: at most one line per "\n", plus one for an unterminated end), and of
    each line what is left after its carriage-return redraws (a progress bar redrawn with
    "\r" is one line, its last state; a CRLF line's "\r" is not a redraw)."""
    pieces = data.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()  # the newline that ends the window, not a line after it
    lines = []
    for piece in pieces:
        piece = piece.removesuffix(b"\r").rsplit(b"\r", 1)[-1]
        line = piece.decode("utf-8", "replace")
        lines.append(line if len(line) <= MAX_LINE_CHARS else line[: MAX_LINE_CHARS - 1] + "…")
    return lines


class MachineAgent:
    """Runs the machine's simulations one after another until `stop` is set."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        grace: float = 30.0,
        heartbeat: float = 5.0,
        state_dir: str | os.PathLike | None = None,
        default_command: list[str] | None = None,
        claim_interval: float = 2.0,
    ):
        self.url, self.token = server_url(url), token
        self.grace, self.heartbeat, self.claim_interval = grace, heartbeat, claim_interval
        self.default_command = default_command
        self.state_dir = Path(state_dir) if state_dir else default_state_dir(url, token)
        self.state_path = self.state_dir / "current.json"
        self.state: dict | None = None
        self._api = Api(url, token)
        self._stopped_on_server_word: int | None = None

    # --- plumbing ---------------------------------------------------------------------------

    def call(self, method: str, path: str, body=None) -> tuple[int, object] | None:
        """(status, body), or None when the server did not answer."""
        try:
            return self._api.request(method, path, body)
        except Unreachable as exc:
            logger.debug("%s %s: %s", method, path, exc)
            return None

    def save_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.state))
        os.replace(temporary, self.state_path)

    def _load_state(self) -> dict | None:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None

    def _forget(self) -> None:
        """The run is over and reported: ship what is left of its output (it ended while the
        server was away longer than FINAL_SHIP_SECONDS: the server has just answered), then
        forget it. A restart before the end finds the ranges in the state file (_abandon)."""
        state = self.state
        if state is not None and "run_dir" in state and "seq" in state:
            shipper = _LogShipper(self, state["simulation_id"], Path(state["run_dir"]), state)
            shipper.ship_rest()
        self._clear_state()

    def _clear_state(self) -> None:
        self.state = None
        self.state_path.unlink(missing_ok=True)

    # --- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self._recover(stop)
        while not stop.is_set():
            answer = self.call("POST", "/agent/claim")
            if answer is None or answer[0] != 200:
                if answer is not None and answer[0] in (401, 403):
                    logger.error("the server refuses this token (%s)", answer[0])
                stop.wait(self.claim_interval)
                continue
            self._run(answer[1], stop)

    def _run(self, simulation: dict, stop: threading.Event) -> None:
        simulation_id = simulation["id"]
        if simulation_id == self._stopped_on_server_word and simulation["status"] == "running":
            # Its command was stopped on the server's word and the server still places it
            # here: report that nothing runs (during a preemption this requeues it).
            reason = "Its command was stopped as the server asked; nothing of it runs here"
            self._report(simulation_id, {"reason": reason}, stop)
            return
        self._stopped_on_server_word = None
        if simulation["status"] == "scheduled":
            answer = self.call("POST", f"/simulations/{simulation_id}/start")
            if answer is None or answer[0] != 200:
                return  # it changed meanwhile, or the server is away: claim again
            simulation = {**simulation, **answer[1]}
        command = simulation.get("command") or self.default_command
        run_dir = self.state_dir / f"simulation-{simulation_id}"
        if not command:
            self._report(simulation_id, {"reason": "The simulation has no command to run."}, stop)
            return
        first_seq = self._next_log_seq(simulation_id)
        try:
            child = _Child.launch(
                command, self._child_env(simulation), simulation.get("working_dir"), run_dir
            )
        except OSError as exc:
            reason = (
                f"Could not launch {command[0]!r} in {simulation.get('working_dir') or '.'}: {exc}"
            )
            self._report(simulation_id, {"reason": reason[:MAX_REASON]}, stop)
            return
        self.state = {
            "simulation_id": simulation_id,
            "pid": child.pid,
            "start_time": child.start_time,
            "run_dir": str(run_dir),
            "seq": first_seq,
        }
        self.save_state()
        logger.info("simulation %s: running %s (pid %s)", simulation_id, command[0], child.pid)
        self._supervise(simulation_id, child, stop)

    def _next_log_seq(self, simulation_id: int) -> int | None:
        """Lines of an earlier attempt of this simulation (it was requeued) keep their numbers:
        this one's continue after them. None while the server does not say (the log shipper
        asks again before it sends a line)."""
        answer = self.call("GET", f"/simulations/{simulation_id}/logs?since={2**53}&limit=1")
        if answer is not None and answer[0] == 200 and isinstance(answer[1], dict):
            last = answer[1].get("last_seq", -1)
            if isinstance(last, int) and not isinstance(last, bool):
                return last + 1
        return None

    def _child_env(self, simulation: dict) -> dict:
        env = {**os.environ, **(simulation.get("env") or {})}
        env.update(
            SIMSCHED_URL=self.url,
            SIMSCHED_TOKEN=self.token,
            SIMSCHED_SIMULATION_ID=str(simulation["id"]),
            SIMSCHED_SPOOL_DIR=str(self.state_dir / f"simulation-{simulation['id']}" / "spool"),
            SIMSCHED_FLUSH_TIMEOUT=str(max(1.0, self.grace - 5)),
        )
        env.pop("SIMSCHED_RESUME_STEP", None)
        if simulation.get("resume_step") is not None:
            env["SIMSCHED_RESUME_STEP"] = str(simulation["resume_step"])
        return env

    def _supervise(self, simulation_id: int, child: _Child, stop: threading.Event) -> None:
        shipper = _LogShipper(self, simulation_id, child.run_dir, self.state)
        stopped_by, stopping_since, next_beat = None, None, 0.0
        while not child.exited():
            now = time.monotonic()
            if shipper.due():
                shipper.ship()
            if stopping_since is None:
                if stop.is_set():
                    stopped_by = "agent"
                elif now >= next_beat:
                    next_beat = now + self.heartbeat
                    stopped_by = self._told_to_stop(simulation_id)
                if stopped_by is not None:
                    logger.info("simulation %s: stopping (SIGTERM to the group)", simulation_id)
                    stopping_since = now
                    child.signal_group(signal.SIGTERM)
            elif now - stopping_since >= self.grace:
                logger.info("simulation %s: grace over, SIGKILL", simulation_id)
                child.signal_group(signal.SIGKILL)
                stopping_since = float("inf")
            time.sleep(TICK_SECONDS)
        child.signal_group(signal.SIGKILL)  # whatever the command left behind in its group
        shipper.ship_rest()  # before the report: a requeued run takes no more lines
        self._sync(child.run_dir / "spool", stop)
        outcome, reported = child.outcome(), True
        if stopped_by is not None and stopped_by != "agent":
            # Never launched again in this placement, whatever a claim says (see _run).
            self._stopped_on_server_word = simulation_id
        if stopped_by == "preempt":
            # The server requeues a preempted run as soon as its agent reports fail (and would
            # mark it finished on `finish`, although it is to resume): the machine is free now.
            reason = f"Stopped for a preemption ({describe(outcome, [])})"
            reported = self._report(simulation_id, {"reason": reason}, stop)
        elif stopped_by == "server":
            logger.info("simulation %s: stopped as the server asked", simulation_id)
        elif stopped_by == "agent":
            reason = "The machine's agent was stopped, and stopped the command first"
            failure = {"reason": f"{reason} ({describe(outcome, [])})"}
            reported = self._report(simulation_id, failure, stop)
        elif outcome is not None and outcome.get("exit_code") == 0:
            reported = self._report(simulation_id, None, stop)
        else:
            failure = {"reason": describe(outcome, child.stderr_tail())}
            reported = self._report(simulation_id, failure, stop)
        if reported:
            self._forget()

    def _told_to_stop(self, simulation_id: int) -> str | None:
        """None (keep running), "preempt" (stop, the run resumes later) or "server" (stop: it
        ended, or is no longer this machine's)."""
        answer = self.call("POST", f"/simulations/{simulation_id}/heartbeat")
        if answer is None or retryable(answer[0]):
            return None  # the server is away: keep running, try again next beat
        status, body = answer
        if status != 200 or not isinstance(body, dict):
            return "server"  # deleted, or no longer this machine's
        if not body.get("stop"):
            return None
        return "preempt" if body.get("preempt") else "server"

    def _report(self, simulation_id: int, failure: dict | None, stop: threading.Event) -> bool:
        """finish (failure None) or fail; retried until the server answers. An answer of 409
        (it already ended) is fine. Recorded in the state file first, so a restart reports it."""
        if self.state is not None:
            self.state["outcome"] = failure or {}
            self.save_state()
        path = "fail" if failure is not None else "finish"
        failures = 0
        while True:
            answer = self.call("POST", f"/simulations/{simulation_id}/{path}", failure)
            if answer is not None and not retryable(answer[0]):
                logger.info("simulation %s: %s (%s)", simulation_id, path, answer[0])
                return True
            failures += 1
            if stop.wait(min(MAX_BACKOFF_SECONDS, 0.25 * 2**failures)):
                return False  # stopping: the state file keeps the outcome for the next start

    def _sync(self, spool_dir: Path, stop: threading.Event) -> None:
        """Values the training process left in its spool, sent with the machine's token."""
        counters = Counters()
        for path in claim_orphans(spool_dir):
            if not replay_file(path, lambda id_: Sender(self._api, id_, counters)):
                logger.warning("spool %s not delivered; `simsched-agent sync` it later", path)

    # --- after a restart --------------------------------------------------------------------

    def _current(self, stop: threading.Event) -> dict | None:
        failures = 0
        while not stop.is_set():
            answer = self.call("GET", "/agent/current")
            if answer is not None and answer[0] == 200:
                return answer[1]
            if answer is not None and answer[0] == 204:
                return None
            failures += 1
            stop.wait(min(MAX_BACKOFF_SECONDS, 0.25 * 2**failures))
        return None

    def _recover(self, stop: threading.Event) -> None:
        """Pick up where a previous agent on this machine left off."""
        state = self._load_state()
        current = self._current(stop)
        if stop.is_set():
            return
        ours = state is not None and current is not None and current["id"] == state["simulation_id"]
        if state is not None and not ours:
            self._abandon(state, stop)
        if ours:
            self.state = state
            child = _Child(state["pid"], state.get("start_time"), Path(state["run_dir"]))
            if "outcome" in state:
                if self._report(state["simulation_id"], state["outcome"] or None, stop):
                    self._forget()
                return
            logger.info("simulation %s: adopting pid %s", state["simulation_id"], state["pid"])
            self._supervise(state["simulation_id"], child, stop)
        elif current is not None and current["status"] == "running":
            reason = (
                "The machine's agent restarted and found no process of this simulation on the "
                "machine (its agent had been killed before it could record one)"
            )
            self._report(current["id"], {"reason": reason}, stop)

    def _abandon(self, state: dict, stop: threading.Event) -> None:
        """A previous simulation the server no longer places here: stop what is left of it."""
        child = _Child(state["pid"], state.get("start_time"), Path(state["run_dir"]))
        if not child.exited():
            logger.info(
                "simulation %s is no longer ours: stopping pid %s",
                state["simulation_id"],
                child.pid,
            )
            child.signal_group(signal.SIGTERM)
            deadline = time.monotonic() + self.grace
            while not child.exited() and time.monotonic() < deadline:
                time.sleep(TICK_SECONDS)
            child.signal_group(signal.SIGKILL)
        self._sync(Path(state["run_dir"]) / "spool", stop)
        self.state = state
        self._forget()
