"""Points on the wire: encoding, and delivery that tells "stored or refused" from "try later".

An item is (step, {metric: value}, unix time). Writes are idempotent by (metric, step), so
anything may be sent again; a refused request is split until the refused value is alone, so
one bad value never costs the others."""

import json
import time
from datetime import UTC, datetime
from itertools import chain
from math import isfinite

from simsched_agent._http import Api, Unreachable, retryable

# Values per request: well under the server's 10,000 and its 4 MiB body limit.
MAX_VALUES_PER_REQUEST = 5000
_NONFINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
# Not the request's fault: keep the values for later (the token or the placement may change).
KEEP_FOR_LATER = frozenset({401, 403, 404})


class Counters:
    """What happened to logged values (read by the training process, written by one thread)."""

    __slots__ = ("stored", "duplicates", "rejected", "dropped", "spooled_steps")

    def __init__(self):
        self.stored = self.duplicates = self.rejected = self.dropped = self.spooled_steps = 0

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}


_LOSS = '"loss"'
_LOSS_PAIR = _LOSS + ":"
_LOSS_VALUE_AT = len(_LOSS_PAIR)
_names: dict[str, str] = {}  # metric name -> its JSON string, encoded once


def _name(name) -> str:
    text = _names.get(name)
    if text is None:
        text = _names[name] = json.dumps(str(name))
    return text


def _as_step(step) -> int:
    try:
        return int(step)
    except Exception:  # noqa: BLE001 - whatever the training code passed: not a step
        return -1


def _as_float(value) -> float | None:
    """numpy and torch scalars convert; a value whose conversion raises (a tensor on a failed
    device) is not a value."""
    if type(value) is float:
        return value
    try:
        return float(value)
    except Exception:  # noqa: BLE001 - whatever the training code passed: not a number
        return None


_INT, _DICT, _FLOAT, _STR = {int}, {dict}, {float}, {str}


def _all_plain(items: list) -> bool:
    """Every step a non-negative int, every point a non-empty dict of str names to floats, every
    stamp a float: what log() almost always gets. Checked in bulk by C loops (set, map, min),
    without a line of Python per value."""
    steps, values, stamps = zip(*items, strict=True)
    return (
        set(map(type, steps)) == _INT
        and min(steps) >= 0
        and set(map(type, values)) == _DICT
        and min(map(len, values)) > 0
        and set(map(type, chain.from_iterable(map(dict.values, values)))) == _FLOAT
        and set(map(type, set(chain.from_iterable(values)))) == _STR
        and set(map(type, stamps)) == _FLOAT
    )


def plain(items: list) -> tuple[list, int]:
    """`items` as JSON can write them (the spool and the wire): int steps, str names, float
    values; and how many values could not be (counted as rejected, as the server would refuse
    them). Items that are plain already are returned as they are."""
    try:
        if not items or _all_plain(items):
            return items, 0
    except (TypeError, ValueError):  # something that is no (step, values, stamp): look closer
        pass
    kept, rejected = [], 0
    for step, values, stamp in items:
        step = step if type(step) is int else _as_step(step)
        if step < 0 or type(values) is not dict:
            rejected += len(values) if type(values) is dict else 1
            continue
        floats = {}
        for name, value in values.items():
            value = _as_float(value)
            if value is None:
                rejected += 1
            else:
                floats[name if type(name) is str else str(name)] = value
        if floats:
            kept.append((step, floats, float(stamp)))
    return kept, rejected


class _Stamps:
    """ISO 8601 timestamps at millisecond precision, formatted once per millisecond (at 10,000
    steps/s most steps share one)."""

    def __init__(self):
        self.ms, self.text = -1, ""

    def __call__(self, stamp: float) -> str:
        ms = int(stamp * 1000)
        if ms != self.ms:
            moment = datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=ms % 1000 * 1000)
            self.ms, self.text = ms, moment.isoformat(timespec="milliseconds")
        return self.text


def _fragment(step: int, pairs: list[str], timestamp: str) -> str:
    """One point as JSON text, written by hand: json.dumps of a dict per point cost more than
    the training step it reports (see bench/agent_log.py)."""
    if len(pairs) == 1 and pairs[0].startswith(_LOSS_PAIR):  # the single-series shape
        value = pairs[0][_LOSS_VALUE_AT:]
        return f'{{"step":{step},"loss_value":{value},"timestamp":"{timestamp}"}}'
    return f'{{"step":{step},"values":{{{",".join(pairs)}}},"timestamp":"{timestamp}"}}'


def encode(items: list, stamps: _Stamps) -> tuple[list[bytes], list[bytes], int]:
    """Request bodies for `items`: the finite values in bodies of at most
    MAX_VALUES_PER_REQUEST values; each non-finite value alone in a body of its own (so that
    its refusal, or the nan guard stopping the run, costs nothing else; JSON has no NaN or
    Infinity, Python's tokens are what the server understands); and how many values could
    not be sent at all. A pure function: the encoder process runs it too (`_encoder.py`)."""
    chunks, chunk, size, singles, rejected = [], [], 0, [], 0
    names = _names
    last_ms, timestamp = -1, ""
    for step, values, stamp in items:  # the hot loop: kept flat on purpose
        if type(step) is not int:
            step = _as_step(step)
        if step < 0 or type(values) is not dict:
            rejected += len(values) if type(values) is dict else 1
            continue
        ms = int(stamp * 1000)
        if ms != last_ms:
            last_ms, timestamp = ms, stamps(stamp)
        pairs = []
        for name, value in values.items():
            if type(value) is not float:
                value = _as_float(value)
                if value is None:
                    rejected += 1
                    continue
            key = names.get(name) or _name(name)
            if isfinite(value):
                pairs.append(f"{key}:{value!r}")
            else:
                single = _fragment(step, [f"{key}:{_NONFINITE[repr(value)]}"], timestamp)
                singles.append(_body([single]))
        if not pairs:
            continue
        chunk.append(_fragment(step, pairs, timestamp))
        size += len(pairs)
        if size >= MAX_VALUES_PER_REQUEST:
            chunks.append(_body(chunk))
            chunk, size = [], 0
    if chunk:
        chunks.append(_body(chunk))
    return chunks, singles, rejected


def _body(points: list[str]) -> bytes:
    return ('{"points":[' + ",".join(points) + "]}").encode()


class Sender:
    """Posts items for one simulation. `send` returns False when the server should be tried
    again later (unreachable, overloaded, or not accepting this token right now): the caller
    keeps every item of that call (resending the delivered ones is harmless).

    `encoder(items)` returns what `encode` does; by default `encode` runs in this thread, a
    Run passes its encoder process's (see `_encoder.py`)."""

    def __init__(
        self,
        api: Api,
        simulation_id: int,
        counters: Counters,
        *,
        timeout: float = 10,
        encoder=None,
    ):
        self.api, self.simulation_id, self.counters, self.timeout = (
            api,
            simulation_id,
            counters,
            timeout,
        )
        self.path = f"/convergence/{simulation_id}/points"
        stamps = _Stamps()
        self.encoder = encoder or (lambda items: encode(items, stamps))
        # time.monotonic() after which no new request starts (a finishing run sets it, from
        # another thread): `send` then returns False, and its caller keeps the items.
        self.deadline: float | None = None

    def send(self, items: list) -> bool:
        if self._past_deadline():
            return False
        bodies, singles, rejected = self.encoder(items)
        self.counters.rejected += rejected
        for body in chain(bodies, singles):
            if self._past_deadline() or not self._post(body):
                return False
        return True

    def _past_deadline(self) -> bool:
        deadline = self.deadline
        return deadline is not None and time.monotonic() >= deadline

    def _post(self, body: bytes) -> bool:
        try:
            status, answer = self.api.request("POST", self.path, raw=body, timeout=self.timeout)
        except Unreachable:
            return False
        if status == 200 and isinstance(answer, dict):
            self.counters.stored += int(answer.get("stored", 0))
            self.counters.duplicates += int(answer.get("duplicates", 0))
            return True
        if retryable(status) or status in KEEP_FOR_LATER:
            return False
        return self._refused(body)

    def _refused(self, body: bytes) -> bool:
        """400/409/413: find the refused values by halving; count them, send the rest."""
        points = json.loads(body)["points"]
        if len(points) > 1:
            half = len(points) // 2
            return self._post(_points_body(points[:half])) and self._post(
                _points_body(points[half:])
            )
        point = points[0]
        values = point.get("values")
        if values and len(values) > 1:
            return all(
                self._post(_points_body([{**point, "values": {name: value}}]))
                for name, value in values.items()
            )
        self.counters.rejected += 1
        return True


def _points_body(points: list[dict]) -> bytes:
    """Parsed points written again (the refusal path: rare, so json.dumps will do)."""
    return json.dumps({"points": points}, separators=(",", ":")).encode()
