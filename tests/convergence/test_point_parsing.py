"""One point validator: a single-point body and the same point inside a batch get the same
verdict (accepted with the same values, or refused naming the same fields)."""

from datetime import UTC, datetime, timedelta

import pytest
from rest_framework.exceptions import ValidationError

from convergence.serializers import parse_point, parse_point_batch

NOW = datetime.now(UTC)

POINTS = [
    {"loss_value": 3, "step": 0},
    {"loss_value": -1.5e-300, "step": 2**31 - 1},
    {"loss_value": 0.5, "step": 12, "timestamp": "2026-01-01T10:00:00Z"},
    {"loss_value": 0.5, "step": 1, "timestamp": "2026-01-01T10:00:00.123456+02:00"},
    {"loss_value": 0.5, "step": 1, "timestamp": "2026-01-01T10:00:00"},
    {"loss_value": 0.5, "step": 1, "timestamp": (NOW - timedelta(hours=1)).isoformat()},
    {"loss_value": 0.5, "step": 1, "extra": "ignored"},
    {"loss_value": 0.5, "step": 1, "metric": "val/loss"},
    {"loss_value": 0.5, "step": 1, "metric": "a" * 100},
    # Refused, the same way by both.
    {"loss_value": "0.5", "step": 3},
    {"loss_value": 0.5, "step": "3"},
    {"loss_value": 0.5, "step": None},
    {"loss_value": 0.5, "step": 1.0},
    {"loss_value": 0.5, "step": True},
    {"loss_value": True, "step": 1},
    {"loss_value": None, "step": 1},
    {"loss_value": 10**400, "step": 1},
    {"loss_value": -(10**400), "step": 1},
    {"loss_value": float("nan"), "step": 1},
    {"loss_value": float("inf"), "step": 1},
    {"loss_value": 0.5, "step": -1},
    {"loss_value": 0.5, "step": 2**31},
    {"loss_value": 0.5, "step": 10**400},
    {"loss_value": 0.5, "step": 1, "timestamp": None},
    {"loss_value": 0.5, "step": 1, "timestamp": "1999-12-31T23:59:59Z"},
    {"loss_value": 0.5, "step": 1, "timestamp": "2026-13-01T00:00:00Z"},
    {"loss_value": 0.5, "step": 1, "timestamp": "9999-12-31T23:59:59-23:59"},
    {"loss_value": 0.5, "step": 1, "timestamp": "0001-01-01T00:00:00+23:59"},
    {"loss_value": 0.5, "step": 1, "timestamp": "yesterday"},
    {"loss_value": 0.5, "step": 1, "timestamp": 1700000000},
    {"loss_value": 0.5, "step": 1, "timestamp": (NOW + timedelta(days=2)).isoformat()},
    {"loss_value": 0.5, "step": 1, "metric": ""},
    {"loss_value": 0.5, "step": 1, "metric": "a" * 101},
    {"loss_value": 0.5, "step": 1, "metric": "loss\n"},
    {"loss_value": 0.5, "step": 1, "metric": "lösś"},
    {"loss_value": 0.5, "step": 1, "metric": 7},
    {"step": 1},
    {"step": 1, "values": {"lr": 0.1}},
    {"loss_value": 0.5, "step": 1, "values": {"lr": 0.1}},
]


def single_answer(point):
    try:
        fields = parse_point({"simulation_id": 7, **point})
    except ValidationError as exc:
        return None, sorted(exc.detail)
    fields.pop("simulation_id")
    fields.setdefault("timestamp", None)
    return fields, None


def batch_answer(point):
    try:
        (parsed,) = parse_point_batch({"points": [point]}).points
    except ValidationError as exc:
        return None, sorted(exc.detail["points"]["0"])
    stamp = parsed.timestamp if "timestamp" in point else None
    fields = {"loss_value": parsed.loss_value, "metric": parsed.metric, "step": parsed.step}
    return {**fields, "timestamp": stamp}, None


@pytest.mark.parametrize("point", POINTS, ids=range(len(POINTS)))
def test_a_single_point_and_a_batch_point_get_the_same_verdict(point):
    single, batch = single_answer(point), batch_answer(point)
    if "values" in point and "loss_value" not in point:  # the values form: batches only
        assert single[0] is None and batch[0] is not None
        return
    assert single == batch


@pytest.mark.parametrize(
    "body",
    [
        {"loss_value": 0.5},
        {"simulation_id": "7", "loss_value": 0.5},
        {"simulation_id": True, "loss_value": 0.5},
        {"simulation_id": 0, "loss_value": 0.5},
        {"simulation_id": 2**63, "loss_value": 0.5},
        [],
        "a point",
    ],
)
def test_a_single_point_needs_an_integer_simulation_id(body):
    with pytest.raises(ValidationError):
        parse_point(body)


def test_a_single_point_may_omit_the_step_a_batch_point_may_not():
    assert "step" not in parse_point({"simulation_id": 7, "loss_value": 0.5})
    with pytest.raises(ValidationError) as raised:
        parse_point_batch({"points": [{"loss_value": 0.5}]})
    assert "step" in raised.value.detail["points"]["0"]
