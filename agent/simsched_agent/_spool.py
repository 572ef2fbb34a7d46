"""The spool: an append-only file of batches the server has not taken yet, one JSON line per
batch, replayed in order when it answers again. Lines carry the simulation id, so a spool left
behind (the process was killed, or gave up at exit) can be uploaded by anyone with a token:
`simsched-agent sync DIR`.

A file is named simsched-<simulation>-<pid>-<random>.jsonl; its pid says whether the process
that writes it is still alive. A file is claimed by renaming it, so two processes never replay
the same one."""

import json
import logging
import os
import re
import secrets
from pathlib import Path

logger = logging.getLogger("simsched_agent")
NAME = re.compile(r"simsched-(\d+)-(\d+)-[0-9a-f]+\.jsonl")


def spool_name(simulation_id: int) -> str:
    return f"simsched-{simulation_id}-{os.getpid()}-{secrets.token_hex(4)}.jsonl"


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def encode(simulation_id: int, items: list) -> bytes:
    points = [[step, values, stamp] for step, values, stamp in items]
    return (json.dumps({"simulation_id": simulation_id, "points": points}) + "\n").encode()


def decode(line: bytes) -> tuple[int, list] | None:
    """(simulation id, items), or None for a line cut short by a crash."""
    try:
        batch = json.loads(line)
        return int(batch["simulation_id"]), [tuple(p) for p in batch["points"]]
    except (ValueError, KeyError, TypeError):
        return None


class Spool:
    """This process's spool for one simulation; used by one thread."""

    def __init__(self, directory: Path, simulation_id: int):
        self.directory = Path(directory)
        self.simulation_id = simulation_id
        self.path = self.directory / spool_name(simulation_id)
        self._fd: int | None = None
        self._written = 0  # bytes in the file
        self._read_at = 0  # bytes already delivered
        self.failed = False

    def append(self, items: list) -> bool:
        """Write one batch durably; False if the disk refused it (the caller counts a drop)."""
        data = encode(self.simulation_id, items)
        try:
            if self._fd is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.write(self._fd, data)
            os.fsync(self._fd)
        except OSError as exc:
            if not self.failed:
                logger.warning("simsched: cannot write the spool %s: %s", self.path, exc)
            self.failed = True
            return False
        self._written += len(data)
        return True

    @property
    def pending(self) -> bool:
        return self._read_at < self._written

    def next_batch(self) -> tuple[list, int] | None:
        """The oldest batch not delivered yet and the offset that marks it delivered."""
        with open(self.path, "rb") as spool:
            spool.seek(self._read_at)
            line = spool.readline()
        end = self._read_at + len(line)
        decoded = decode(line)
        return ([], end) if decoded is None else (decoded[1], end)

    def delivered(self, end: int) -> None:
        self._read_at = end
        if self._read_at >= self._written and self._fd is not None:
            os.ftruncate(self._fd, 0)  # all delivered: start the file afresh
            self._read_at = self._written = 0

    def close(self) -> None:
        """Keep the file if anything is left in it, for a later replay or `sync`."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        if not self.pending:
            self.path.unlink(missing_ok=True)


def claim_orphans(directory: Path, simulation_id: int | None = None) -> list[Path]:
    """Spool files whose writer is gone (for `simulation_id`, or all), renamed to be ours."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    claimed = []
    for path in sorted(directory.rglob("simsched-*.jsonl")):
        match = NAME.fullmatch(path.name)
        if match is None or pid_alive(int(match[2])):
            continue
        if simulation_id is not None and int(match[1]) != simulation_id:
            continue
        target = path.with_name(spool_name(int(match[1])))
        try:
            path.rename(target)  # atomic: if another process got there first, it is theirs
        except OSError:
            continue
        claimed.append(target)
    return claimed


def replay_file(path: Path, senders) -> bool:
    """Send every batch of a claimed spool file with `senders(simulation_id)`; the file is
    deleted once all of it was delivered. False (file kept) if the server must be retried."""
    with open(path, "rb") as spool:
        for line in spool:
            decoded = decode(line)
            if decoded is None:
                continue
            simulation_id, items = decoded
            if not senders(simulation_id).send(items):
                return False
    path.unlink(missing_ok=True)
    return True
