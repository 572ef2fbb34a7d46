"""What a simulation's `guards` may say, and which of them ingestion must look at.

Pure rules plus one per-process cache, with no dependency on the services, so that both the
services (validating input) and `simulations.guards` (evaluating) can use them.
"""

import json
import re
import time

from django.conf import settings
from django.db import connection

from simsched.exceptions import ApplicationError

METRIC_NAME = re.compile(r"^[A-Za-z0-9_./-]{1,100}$")
MAX_STALL_SECONDS = 30 * 24 * 3600
MAX_WINDOW = 2**31 - 1
# A factor or min_delta beyond it means "never"; the bound makes 10**400 a 400, not a 500.
MAX_GUARD_NUMBER = 1e12
GUARD_KEYS = ("nan", "stall_seconds", "plateau", "divergence")
POINT_GUARDS = ("plateau", "divergence")  # evaluated on every write that carries their metric

ERR_GUARDS_OBJECT = "Must be an object with any of: nan, stall_seconds, plateau, divergence."
ERR_UNKNOWN_GUARD = "Unknown guard '{key}'; known: nan, stall_seconds, plateau, divergence."
ERR_NAN = "Must be true or false."
ERR_STALL = f"Must be an integer number of seconds from 1 to {MAX_STALL_SECONDS}, or null."
ERR_METRIC = "metric must be 1-100 letters, digits or _ . / - (e.g. 'loss')."
ERR_PLATEAU = "Must be null or {metric, window (steps >= 1), min_delta (0 to 1e12)}."
ERR_DIVERGENCE = "Must be null or {metric, factor (a number > 1)}."


def _is_number(value) -> bool:
    return type(value) in (int, float) and value == value and abs(value) != float("inf")


def _metric(value: dict, errors: list[str]) -> str:
    metric = value.get("metric", "loss")
    if type(metric) is not str or not METRIC_NAME.match(metric):
        errors.append(ERR_METRIC)
    return metric


def _plateau(value) -> dict:
    errors: list[str] = []
    if not isinstance(value, dict) or set(value) - {"metric", "window", "min_delta"}:
        raise ValueError(ERR_PLATEAU)
    metric = _metric(value, errors)
    window, min_delta = value.get("window"), value.get("min_delta", 0)
    if type(window) is not int or not 1 <= window <= MAX_WINDOW:
        errors.append(ERR_PLATEAU)
    if not _is_number(min_delta) or not 0 <= min_delta <= MAX_GUARD_NUMBER:
        errors.append(ERR_PLATEAU)
    if errors:
        raise ValueError(" ".join(dict.fromkeys(errors)))
    return {"metric": metric, "window": window, "min_delta": float(min_delta)}


def _divergence(value) -> dict:
    errors: list[str] = []
    if not isinstance(value, dict) or set(value) - {"metric", "factor"}:
        raise ValueError(ERR_DIVERGENCE)
    metric = _metric(value, errors)
    factor = value.get("factor")
    if not _is_number(factor) or not 1 < factor <= MAX_GUARD_NUMBER:
        errors.append(ERR_DIVERGENCE)
    if errors:
        raise ValueError(" ".join(dict.fromkeys(errors)))
    return {"metric": metric, "factor": float(factor)}


def normalize_guards(value, *, defaults: dict | None = None) -> dict:
    """The guards object in its stored form: `defaults` overlaid with `value`, null meaning
    "off", unknown keys and bad values refused (ApplicationError with per-key `fields`)."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ApplicationError("Invalid input.", fields={"guards": [ERR_GUARDS_OBJECT]})
    merged = {**(defaults or {}), **value}
    errors: dict[str, list[str]] = {}
    result: dict = {"nan": False}
    for key, item in merged.items():
        if key not in GUARD_KEYS:
            errors[key] = [ERR_UNKNOWN_GUARD.format(key=key)]
        elif key == "nan":
            if type(item) is not bool:
                errors[key] = [ERR_NAN]
            result["nan"] = item is True
        elif item is None:
            continue
        elif key == "stall_seconds":
            if type(item) is not int or not 1 <= item <= MAX_STALL_SECONDS:
                errors[key] = [ERR_STALL]
            else:
                result[key] = item
        else:
            try:
                result[key] = _plateau(item) if key == "plateau" else _divergence(item)
            except ValueError as exc:
                errors[key] = [str(exc)]
    if errors:
        raise ApplicationError("Invalid input.", fields={"guards": errors})
    return result


def default_guards() -> dict:
    return normalize_guards(settings.SIMSCHED_DEFAULT_GUARDS)


def point_guards(guards: dict) -> dict | None:
    """The part of `guards` that ingestion evaluates, or None when there is none."""
    found = {key: guards[key] for key in POINT_GUARDS if guards.get(key)}
    return found or None


# --- Which simulations ingestion must look at: remembered per process --------------------------

_CACHE_MAX = 10_000
_cache: dict[int, tuple[float, dict | None]] = {}


def cached_point_guards(simulation_id: int) -> dict | None:
    """The simulation's plateau/divergence guards as this process last read them, at most
    SIMSCHED_GUARD_CACHE_SECONDS ago: a write to a simulation without them costs no query.
    A change takes effect at once in the process that makes it (`forget`), within that time
    in the others."""
    now = time.monotonic()
    hit = _cache.get(simulation_id)
    if hit is not None and hit[0] > now:
        return hit[1]
    found = _read_point_guards(simulation_id)
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[simulation_id] = (now + settings.SIMSCHED_GUARD_CACHE_SECONDS, found)
    return found


def forget(simulation_id: int) -> None:
    _cache.pop(simulation_id, None)


def _read_point_guards(simulation_id: int) -> dict | None:
    """Bare SQL: one column by primary key, on the write path, where the ORM's query building
    costs more than the query."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT guards FROM simulations WHERE id = %s", [simulation_id])
        row = cursor.fetchone()
    if row is None:
        return None
    guards = row[0]
    if isinstance(guards, str):  # SQLite (and psycopg without the JSON loader) return text
        guards = json.loads(guards)
    return point_guards(guards or {})
