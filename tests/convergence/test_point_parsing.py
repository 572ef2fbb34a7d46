"""`parse_point` takes a fast path for the common single-point body; whatever it accepts, the
serializer accepts with the same values, and whatever else arrives gets the serializer's answer."""

from datetime import UTC, datetime, timedelta

import pytest
from rest_framework.exceptions import ValidationError

from convergence.serializers import BarePointInputSerializer, PointInputSerializer, parse_point

NOW = datetime.now(UTC)

BODIES = [
    {"simulation_id": 7, "loss_value": 0.25},
    {"simulation_id": 7, "loss_value": 3, "step": 0},
    {"simulation_id": 7, "loss_value": -1.5e-300, "step": 2**31 - 1},
    {"simulation_id": 7, "loss_value": 0.5, "step": 12, "timestamp": "2026-01-01T10:00:00Z"},
    {"simulation_id": 7, "loss_value": 0.5, "timestamp": "2026-01-01T10:00:00.123456+02:00"},
    {"simulation_id": 7, "loss_value": 0.5, "timestamp": "2026-01-01T10:00:00"},
    {"simulation_id": 7, "loss_value": 0.5, "timestamp": (NOW - timedelta(hours=1)).isoformat()},
    {"simulation_id": 7, "loss_value": 0.5, "extra": "ignored"},
    # Not for the fast path; the serializer decides.
    {"simulation_id": "7", "loss_value": "0.5", "step": "3"},
    {"simulation_id": 7, "loss_value": 0.5, "step": None},
    {"simulation_id": 7, "loss_value": 0.5, "timestamp": None},
    {"simulation_id": 7, "loss_value": 0.5, "step": True},
    {"simulation_id": 7, "loss_value": 10**400},
    {"simulation_id": 7, "loss_value": float("nan")},
    {"simulation_id": 7, "loss_value": float("inf")},
    {"simulation_id": 0, "loss_value": 0.5},
    {"simulation_id": 2**63, "loss_value": 0.5},
    {"simulation_id": 7, "loss_value": 0.5, "step": -1},
    {"simulation_id": 7, "loss_value": 0.5, "step": 2**31},
    {"simulation_id": 7, "loss_value": 0.5, "timestamp": "1999-12-31T23:59:59Z"},
    {"simulation_id": 7, "loss_value": 0.5, "timestamp": "2026-13-01T00:00:00Z"},
    {"simulation_id": 7, "loss_value": 0.5, "timestamp": "yesterday"},
    {"simulation_id": 7, "loss_value": 0.5, "timestamp": 1700000000},
    {"simulation_id": 7, "loss_value": 0.5, "timestamp": (NOW + timedelta(days=2)).isoformat()},
    {"loss_value": 0.5},
    {"simulation_id": 7},
    [],
    "a point",
]


def serializer_answer(body, serializer_class):
    serializer = serializer_class(data=body)
    if serializer.is_valid():
        return dict(serializer.validated_data), None
    return None, serializer.errors


def parse_answer(body, serializer_class):
    try:
        return dict(parse_point(body, serializer_class)), None
    except ValidationError as exc:
        return None, exc.detail


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
@pytest.mark.parametrize("serializer_class", [PointInputSerializer, BarePointInputSerializer])
def test_parse_point_answers_as_the_serializer_does(body, serializer_class):
    assert parse_answer(body, serializer_class) == serializer_answer(body, serializer_class)
