"""Points on the wire: encoding, and delivery that tells "stored or refused" from "try later".

An item is (step, {metric: value}, unix time). Writes are idempotent by (metric, step), so
anything may be sent again; a refused request is split until the refused value is alone, so
one bad value never costs the others."""

import math
from datetime import UTC, datetime

from simsched_agent._http import Api, Unreachable, retryable

# Values per request: well under the server's 10,000 and its 4 MiB body limit.
MAX_VALUES_PER_REQUEST = 5000
# Not the request's fault: keep the values for later (the token or the placement may change).
KEEP_FOR_LATER = frozenset({401, 403, 404})


class Counters:
    """What happened to logged values (read by the training process, written by one thread)."""

    __slots__ = ("stored", "duplicates", "rejected", "dropped", "spooled_steps")

    def __init__(self):
        self.stored = self.duplicates = self.rejected = self.dropped = self.spooled_steps = 0

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}


def clean(item) -> tuple | None:
    """(int step, {str: float}, float time), or None for what can never be sent."""
    step, values, stamp = item
    try:
        step = int(step)
        values = {str(name): float(value) for name, value in values.items()}
    except (TypeError, ValueError, AttributeError, OverflowError):
        return None
    if step < 0 or not values:
        return None
    return step, values, stamp


def _wire(step: int, values: dict, stamp: float) -> dict:
    return _point(step, values, datetime.fromtimestamp(stamp, UTC).isoformat())


def _point(step: int, values: dict, timestamp: str) -> dict:
    if len(values) == 1 and "loss" in values:  # the original single-series shape
        return {"step": step, "loss_value": values["loss"], "timestamp": timestamp}
    return {"step": step, "values": values, "timestamp": timestamp}


class Sender:
    """Posts items for one simulation. `send` returns False when the server should be tried
    again later (unreachable, overloaded, or not accepting this token right now): the caller
    keeps every item of that call (resending the delivered ones is harmless)."""

    def __init__(self, api: Api, simulation_id: int, counters: Counters, *, timeout: float = 10):
        self.api, self.simulation_id, self.counters, self.timeout = (
            api,
            simulation_id,
            counters,
            timeout,
        )
        self.path = f"/convergence/{simulation_id}/points"

    def send(self, items: list) -> bool:
        finite, nonfinite, chunk, size = [], [], [], 0
        for item in items:
            cleaned = clean(item)
            if cleaned is None:
                self.counters.rejected += len(item[1]) if isinstance(item[1], dict) else 1
                continue
            step, values, stamp = cleaned
            good = {k: v for k, v in values.items() if math.isfinite(v)}
            if len(good) != len(values):
                nonfinite.extend((step, {k: v}, stamp) for k, v in values.items() if k not in good)
            if good:
                chunk.append(_wire(step, good, stamp))
                size += len(good)
            if size >= MAX_VALUES_PER_REQUEST:
                finite.append((chunk, size))
                chunk, size = [], 0
        if chunk:
            finite.append((chunk, size))
        for points, count in finite:
            if not self._post(points, count):
                return False
        # Alone, so that the refusal (or the nan guard stopping the run) costs nothing else.
        return all(self._post([_wire(*item)], 1) for item in nonfinite)

    def _post(self, points: list[dict], count: int) -> bool:
        try:
            status, body = self.api.request(
                "POST", self.path, {"points": points}, timeout=self.timeout
            )
        except Unreachable:
            return False
        if status == 200 and isinstance(body, dict):
            self.counters.stored += int(body.get("stored", 0))
            self.counters.duplicates += int(body.get("duplicates", 0))
            return True
        if retryable(status) or status in KEEP_FOR_LATER:
            return False
        return self._refused(points, count)

    def _refused(self, points: list[dict], count: int) -> bool:
        """400/409/413: find the refused values by halving; count them, send the rest."""
        if len(points) > 1:
            half = len(points) // 2
            left, right = points[:half], points[half:]
            return self._post(left, _values(left)) and self._post(right, _values(right))
        (point,) = points
        values = point.get("values")
        if values and len(values) > 1:
            singles = [_point(point["step"], {k: v}, point["timestamp"]) for k, v in values.items()]
            return all(self._post([single], 1) for single in singles)
        self.counters.rejected += count
        return True


def _values(points: list[dict]) -> int:
    return sum(len(p["values"]) if "values" in p else 1 for p in points)
