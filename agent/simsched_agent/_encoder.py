"""The encoder process: it writes a run's batches as request bodies, outside the training
process.

Why a process: writing a float as JSON text (its shortest repr) costs about a microsecond per
value, and a sender thread doing it holds the GIL that the training loop needs; at 10,000
steps/s of three series that alone was a 3-5% slowdown (bench/agent_log.py). Pickling the
same batch with marshal costs the training process about a twentieth of that (a float is
copied, 8 bytes, not formatted); a child process reads it, runs `encode`, and sends the bodies
back.

The training process keeps custody of every value: the encoder only turns items into bytes.
When it cannot start, dies, or takes longer than `timeout`, the sender encodes in its own
thread as before, for the rest of the run.
"""

import logging
import marshal
import os
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

from simsched_agent._points import _Stamps, encode, plain

logger = logging.getLogger("simsched_agent")
_HEADER = struct.Struct(">Q")  # the length of the marshal data that follows
_PIPE_BYTES = 1 << 20  # a batch's bodies in one or two reads, not sixteen
_F_SETPIPE_SZ = 1031  # Linux


def _marshalled(items: list) -> bytes | None:
    """The batch for the child, written by marshal (the fastest of the standard library's
    serializers: ~0.15 µs per step of three values, measured); None when it holds something
    that is not an int, float, str, dict or tuple (a numpy or torch scalar)."""
    try:
        return marshal.dumps(items)
    except ValueError:  # "unmarshallable object"
        return None


class EncoderProcess:
    """`encode` for a Sender, run by a child process; callable like `encode` without its
    stamps argument. Used by one thread."""

    def __init__(self, *, timeout: float):
        self.timeout = timeout
        self.process: subprocess.Popen | None = None
        self.failed = False
        self._stamps = _Stamps()

    def __call__(self, items: list) -> tuple[list[bytes], list[bytes], int]:
        rejected, data = 0, None
        if not self.failed:
            data = _marshalled(items)
            if data is None:  # framework scalars: converted here, where their library is
                items, rejected = plain(items)
                data = _marshalled(items)
        if data is not None:
            try:
                bodies, singles, more = self._ask(data)
                return bodies, singles, rejected + more
            except Exception as exc:  # noqa: BLE001 - never worse than encoding here
                self._give_up(exc)
        bodies, singles, more = encode(items, self._stamps)
        return bodies, singles, rejected + more

    def _ask(self, data: bytes) -> tuple:
        process = self.process or self._start()
        deadline = time.monotonic() + self.timeout
        _write(process.stdin.fileno(), _HEADER.pack(len(data)) + data, deadline)
        (size,) = _HEADER.unpack(_read(process.stdout.fileno(), _HEADER.size, deadline))
        return marshal.loads(_read(process.stdout.fileno(), size, deadline))

    def _start(self) -> subprocess.Popen:
        if not sys.executable:
            raise OSError("no Python executable to start")
        package_parent = str(Path(__file__).resolve().parent.parent)
        code = (
            f"import sys; sys.path.insert(0, {package_parent!r}); "
            "from simsched_agent._encoder import main; main()"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        for pipe in (self.process.stdin, self.process.stdout):
            os.set_blocking(pipe.fileno(), False)
            _grow(pipe.fileno())
        return self.process

    def _give_up(self, exc: Exception) -> None:
        logger.warning("simsched: the encoder process failed (%s); encoding in-process", exc)
        self.failed = True
        self.close()

    def close(self) -> None:
        """End the child: an empty batch says so (its input may stay open in processes forked
        from this one, such as data loader workers), then its input closes."""
        process, self.process = self.process, None
        if process is None:
            return
        try:
            _write(process.stdin.fileno(), _HEADER.pack(0), time.monotonic() + 1)
        except Exception:  # noqa: BLE001 - gone already, or stuck: killed below
            pass
        for pipe in (process.stdin, process.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _grow(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
    except (ImportError, OSError):  # not Linux, or a lower limit: smaller reads, that is all
        pass


def _write(fd: int, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view:
        _wait(fd, deadline, write=True)
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            continue


def _read(fd: int, size: int, deadline: float) -> bytes:
    buffer = bytearray()
    while len(buffer) < size:
        _wait(fd, deadline, write=False)
        try:
            chunk = os.read(fd, size - len(buffer))
        except BlockingIOError:
            continue
        if not chunk:
            raise EOFError("the encoder process ended")
        buffer += chunk
    return bytes(buffer)


def _wait(fd: int, deadline: float, *, write: bool) -> None:
    remaining = deadline - time.monotonic()
    ready = remaining > 0 and any(
        select.select([], [fd], [], remaining) if write else select.select([fd], [], [], remaining)
    )
    if not ready:
        raise TimeoutError("the encoder process did not answer in time")


def main() -> None:
    """The child: batches in on stdin, bodies out on stdout, until an empty one or the end."""
    # The training process decides when this ends (at the end of its input): a SIGTERM or
    # Ctrl-C sent to the process group must not take the encoder away while the run flushes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    stamps = _Stamps()
    while True:
        header = source.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        (size,) = _HEADER.unpack(header)
        if not size:
            return
        answer = marshal.dumps(encode(marshal.loads(source.read(size)), stamps))
        sink.write(_HEADER.pack(len(answer)) + answer)
        sink.flush()
