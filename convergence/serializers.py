import math
from datetime import UTC, datetime, timedelta

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework import serializers

from convergence.selectors import GRAPH_DEFAULT_POINTS, GRAPH_MAX_POINTS, GRAPH_MIN_POINTS
from convergence.services import MAX_BATCH_POINTS, Point

MAX_STEP = 2**31 - 1
EARLIEST_TIMESTAMP = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE_TOLERANCE = timedelta(days=1)
MAX_REPORTED_ERRORS = 20

ERR_NOT_FINITE = "Must be a finite number (NaN and Infinity are not allowed)."
ERR_TIMESTAMP_RANGE = "Must be between 2000-01-01 and one day from now."


def validate_finite(value: float) -> float:
    if not math.isfinite(value):
        raise serializers.ValidationError(ERR_NOT_FINITE)
    return value


def validate_timestamp(value: datetime) -> datetime:
    if timezone.is_naive(value):
        value = value.replace(tzinfo=UTC)
    if not EARLIEST_TIMESTAMP <= value <= timezone.now() + FUTURE_TOLERANCE:
        raise serializers.ValidationError(ERR_TIMESTAMP_RANGE)
    return value


class PointSerializer(serializers.Serializer):
    """A stored point. Declared field by field: a ModelSerializer rebuilds its fields from the
    model on every use, which cost more than the rest of a single-point write."""

    id = serializers.IntegerField(read_only=True)
    simulation_id = serializers.IntegerField(read_only=True)
    step = serializers.IntegerField(read_only=True)
    timestamp = serializers.DateTimeField(read_only=True)
    loss_value = serializers.FloatField(read_only=True)


_POINT_SERIALIZER = PointSerializer()


def point_representation(point) -> dict:
    """`PointSerializer(point).data`, from one shared instance: a new serializer deep-copies its
    fields, which cost more than the rest of a single-point response."""
    return _POINT_SERIALIZER.to_representation(point)


class PointInputSerializer(serializers.Serializer):
    simulation_id = serializers.IntegerField(min_value=1, max_value=2**63 - 1)
    loss_value = serializers.FloatField(validators=[validate_finite])
    step = serializers.IntegerField(
        min_value=0, max_value=MAX_STEP, required=False, help_text="Omit to take the next step."
    )
    timestamp = serializers.DateTimeField(
        required=False, validators=[validate_timestamp], help_text="Server time when omitted."
    )


class BarePointInputSerializer(PointInputSerializer):
    simulation_id = None


def parse_point(data, serializer_class=PointInputSerializer) -> dict:
    """Validate a single-point body. The common case (integer ids and step, a finite number,
    no or an ISO 8601 timestamp) skips building a serializer; anything else goes through
    `serializer_class`, which also words the errors."""
    fields = _fast_single_point(data, with_simulation=serializer_class is PointInputSerializer)
    if fields is not None:
        return fields
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _fast_single_point(data, *, with_simulation: bool) -> dict | None:
    if type(data) is not dict:
        return None
    fields = {}
    if with_simulation:
        simulation_id = data.get("simulation_id")
        if type(simulation_id) is not int or not 1 <= simulation_id < 2**63:
            return None
        fields["simulation_id"] = simulation_id
    step, loss, stamp = data.get("step"), data.get("loss_value"), data.get("timestamp")
    try:
        if type(loss) is not float and type(loss) is not int or not math.isfinite(loss):
            return None
        fields["loss_value"] = float(loss)
        timestamp = parse_datetime(stamp) if type(stamp) is str else None
    except (OverflowError, ValueError):
        return None
    if "step" in data:
        if type(step) is not int or not 0 <= step <= MAX_STEP:
            return None
        fields["step"] = step
    if "timestamp" in data:
        if timestamp is None:
            return None
        if timezone.is_naive(timestamp):
            timestamp = timestamp.replace(tzinfo=UTC)
        if not EARLIEST_TIMESTAMP <= timestamp <= timezone.now() + FUTURE_TOLERANCE:
            return None
        fields["timestamp"] = timestamp
    return fields


class BatchPointSerializer(serializers.Serializer):
    step = serializers.IntegerField(min_value=0, max_value=MAX_STEP)
    loss_value = serializers.FloatField()
    timestamp = serializers.DateTimeField(required=False)


class BatchInputSerializer(serializers.Serializer):
    """Documents the batch body; `parse_point_batch` validates it (10,000 points must not pay
    for 10,000 serializer instances)."""

    # A ListField (not many=True) so the schema shows minItems/maxItems.
    points = serializers.ListField(
        child=BatchPointSerializer(), min_length=1, max_length=MAX_BATCH_POINTS
    )


class BatchResultSerializer(serializers.Serializer):
    stored = serializers.IntegerField()
    duplicates = serializers.IntegerField()


def _point_errors(item, now: datetime) -> tuple[dict, Point | None]:
    errors: dict[str, list[str]] = {}
    if not isinstance(item, dict):
        return {"non_field_errors": ["Must be an object with step and loss_value."]}, None
    step, loss, stamp = item.get("step"), item.get("loss_value"), item.get("timestamp")
    if type(step) is not int or not 0 <= step <= MAX_STEP:
        errors["step"] = [f"Must be an integer from 0 to {MAX_STEP}."]
    if type(loss) not in (int, float) or not math.isfinite(loss):
        errors["loss_value"] = [ERR_NOT_FINITE]
    timestamp = now
    if stamp is not None:
        try:
            timestamp = datetime.fromisoformat(stamp)
        except (TypeError, ValueError):
            errors["timestamp"] = ["Must be an ISO 8601 date-time."]
        else:
            if timestamp.tzinfo is None:
                timestamp = timestamp.replace(tzinfo=UTC)
            if not EARLIEST_TIMESTAMP <= timestamp <= now + FUTURE_TOLERANCE:
                errors["timestamp"] = [ERR_TIMESTAMP_RANGE]
    if errors:
        return errors, None
    return {}, Point(step, float(loss), timestamp)


def parse_point_batch(data) -> list[Point]:
    """Validate a batch body fast; errors name the index of each bad point (the first 20).
    The same rules as `validate_timestamp` and `validate_finite`, with the clock read once."""
    points = data.get("points") if isinstance(data, dict) else None
    if not isinstance(points, list) or not points:
        raise serializers.ValidationError({"points": ["A non-empty list of points is required."]})
    if len(points) > MAX_BATCH_POINTS:
        raise serializers.ValidationError(
            {"points": [f"At most {MAX_BATCH_POINTS} points per request; got {len(points)}."]}
        )
    parsed, errors, seen = [], {}, {}
    now = timezone.now()
    latest = now + FUTURE_TOLERANCE
    for index, item in enumerate(points):
        point = _fast_point(item, now, latest)
        item_errors = {} if point is not None else _point_errors(item, now)[0]
        if point is not None and point.step in seen and seen[point.step] != point.loss_value:
            item_errors = {"step": ["Appears twice in this batch with different loss values."]}
        if item_errors:
            errors[str(index)] = item_errors
            if len(errors) >= MAX_REPORTED_ERRORS:
                break
            continue
        if point.step not in seen:
            seen[point.step] = point.loss_value
            parsed.append(point)
    if errors:
        raise serializers.ValidationError({"points": errors})
    return parsed


def _fast_point(item, now: datetime, latest: datetime) -> Point | None:
    """The common case, a valid point, with as little work as possible; None means "look
    closer" (`_point_errors` says what is wrong)."""
    try:
        step, loss, stamp = item["step"], item["loss_value"], item.get("timestamp")
        if type(step) is not int or not 0 <= step <= MAX_STEP or not math.isfinite(loss):
            return None
        if type(loss) is not float and type(loss) is not int:
            return None
        if stamp is None:
            return Point(step, float(loss), now)
        timestamp = datetime.fromisoformat(stamp)
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    if not EARLIEST_TIMESTAMP <= timestamp <= latest:
        return None
    return Point(step, float(loss), timestamp)


class GraphQuerySerializer(serializers.Serializer):
    max_points = serializers.IntegerField(
        min_value=GRAPH_MIN_POINTS, max_value=GRAPH_MAX_POINTS, default=GRAPH_DEFAULT_POINTS
    )
    from_step = serializers.IntegerField(min_value=0, max_value=MAX_STEP, required=False)
    to_step = serializers.IntegerField(min_value=0, max_value=MAX_STEP, required=False)

    def validate(self, attrs):
        if attrs.get("from_step", 0) > attrs.get("to_step", MAX_STEP):
            raise serializers.ValidationError({"to_step": ["Must not be less than from_step."]})
        return attrs


class StreamQuerySerializer(serializers.Serializer):
    since_step = serializers.IntegerField(min_value=-1, max_value=MAX_STEP, default=-1)
    limit = serializers.IntegerField(min_value=1, max_value=10_000, default=10_000)


class GraphPointSerializer(serializers.Serializer):
    step = serializers.IntegerField()
    loss = serializers.FloatField()


class GraphSerializer(serializers.Serializer):
    simulation_id = serializers.IntegerField()
    status = serializers.CharField()
    is_complete = serializers.BooleanField()
    from_step = serializers.IntegerField(allow_null=True)
    to_step = serializers.IntegerField(allow_null=True)
    raw_points = serializers.IntegerField(help_text="Points stored in the window.")
    returned_points = serializers.IntegerField()
    downsampled = serializers.BooleanField()
    bucket_width = serializers.IntegerField(help_text="Steps per bucket when downsampled.")
    points = GraphPointSerializer(many=True)


class StreamPointSerializer(GraphPointSerializer):
    timestamp = serializers.DateTimeField()


class StreamSerializer(serializers.Serializer):
    simulation_id = serializers.IntegerField()
    status = serializers.CharField()
    is_complete = serializers.BooleanField()
    since_step = serializers.IntegerField()
    last_step = serializers.IntegerField()
    has_more = serializers.BooleanField()
    points = StreamPointSerializer(many=True)
