"""A simulation's stdout and stderr, as its agent ships them: numbered lines, the last
`SIMSCHED_LOG_LINES` of each simulation kept, pushed live to the simulation's socket."""

from typing import NamedTuple

from django.conf import settings
from django.db import transaction
from django.db.models import Max

from simsched.broadcast import broadcast, simulation_group
from simulations.models import LogLine

MAX_LINES_PER_REQUEST = 1000
MAX_LINE_CHARS = 16_384
MAX_SEQ = 2**53
LOGS_PAGE_DEFAULT, LOGS_PAGE_MAX = 1000, 5000
# A write's lines go out on the socket when they are this small; a bigger write is announced
# (`truncated`) and viewers fetch it from GET /simulations/{id}/logs?since=.
MAX_PUSHED_CHARS = 64 * 1024


class LogInput(NamedTuple):
    seq: int
    stream: str
    line: str


class LogAppendResult(NamedTuple):
    stored: int
    duplicates: int


def printable(line: str) -> str:
    """A program may print anything; PostgreSQL stores neither NUL nor unpaired surrogates."""
    return line.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _line_payload(line: LogLine) -> dict:
    return {
        "seq": line.seq,
        "stream": line.stream,
        "line": line.line,
        "created_at": line.created_at.isoformat(),
    }


@transaction.atomic
def log_lines_append(*, simulation_id: int, lines: list[LogInput]) -> LogAppendResult:
    """Store the lines not stored yet (idempotent by seq), drop what falls out of the window,
    and push the new lines to the simulation's viewers after commit."""
    by_seq = {line.seq: line for line in lines}
    known = set(
        LogLine.objects.filter(simulation_id=simulation_id, seq__in=by_seq).values_list(
            "seq", flat=True
        )
    )
    new = [
        LogLine(simulation_id=simulation_id, seq=seq, stream=line.stream, line=line.line)
        for seq, line in sorted(by_seq.items())
        if seq not in known
    ]
    # A concurrent resend of the same lines is stored once (the unique constraint decides).
    LogLine.objects.bulk_create(new, ignore_conflicts=True)
    if new:
        _drop_beyond_window(simulation_id, max(line.seq for line in new))
        _push(simulation_id, new)
    return LogAppendResult(stored=len(new), duplicates=len(lines) - len(new))


def _push(simulation_id: int, new: list[LogLine]) -> None:
    small = sum(len(line.line) for line in new) <= MAX_PUSHED_CHARS
    message = {
        "type": "simulation.logs",
        "simulation_id": simulation_id,
        "last_seq": new[-1].seq,
        "truncated": not small,
        "lines": [_line_payload(line) for line in new] if small else [],
    }
    broadcast(simulation_group(simulation_id), message)


def _drop_beyond_window(simulation_id: int, newest_seq: int) -> None:
    keep = settings.SIMSCHED_LOG_LINES
    if newest_seq < keep:  # seqs start at 0: the window cannot be full yet
        return
    kept = LogLine.objects.filter(simulation_id=simulation_id).order_by("-seq")
    first_dropped = kept.values_list("seq", flat=True)[keep : keep + 1].first()
    if first_dropped is not None:
        LogLine.objects.filter(simulation_id=simulation_id, seq__lte=first_dropped).delete()


def log_lines_since(*, simulation_id: int, since: int = -1, limit: int = LOGS_PAGE_DEFAULT) -> dict:
    """The kept lines after `since`, oldest first, and where to continue from."""
    page = list(
        LogLine.objects.filter(simulation_id=simulation_id, seq__gt=since).order_by("seq")[
            : limit + 1
        ]
    )
    has_more = len(page) > limit
    page = page[:limit]
    last = LogLine.objects.filter(simulation_id=simulation_id).aggregate(last=Max("seq"))["last"]
    return {
        "last_seq": -1 if last is None else last,
        "simulation_id": simulation_id,
        "since": since,
        "next_since": page[-1].seq if page else since,
        "has_more": has_more,
        "lines": [_line_payload(line) for line in page],
    }
