import math
import re
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from django.utils import timezone
from rest_framework import serializers

from convergence.models import DEFAULT_METRIC, METRIC_MAX_LENGTH, METRIC_PATTERN
from convergence.selectors import GRAPH_DEFAULT_POINTS, GRAPH_MAX_POINTS, GRAPH_MIN_POINTS
from convergence.selectors.charts import utc_datetime, utc_iso
from convergence.services import MAX_BATCH_POINTS, MAX_STEP, Point

EARLIEST_TIMESTAMP = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE_TOLERANCE = timedelta(days=1)
MAX_REPORTED_ERRORS = 20

ERR_NOT_FINITE = "Must be a finite number (NaN and Infinity are not allowed)."
ERR_TIMESTAMP_RANGE = "Must be between 2000-01-01 and one day from now."
ERR_TIMESTAMP = "Must be an ISO 8601 date-time."
ERR_STEP = f"Must be an integer from 0 to {MAX_STEP}."
ERR_REQUIRED = "This field is required."
ERR_SIMULATION_ID = "Must be an integer from 1 to 2**63 - 1."
ERR_METRIC = "Must be 1 to 100 letters, digits, or _ . / - characters."
ERR_VALUES = "Must be a non-empty object of metric names to numbers."
ERR_VALUES_OR_LOSS = "Send either values, or loss_value (and metric), not both."
ERR_SINGLE_VALUES = "A single point carries loss_value (and metric); use /points for values."
ERR_TWICE = "Appears twice in this batch with different values."
ERR_TOO_MANY_VALUES = f"At most {MAX_BATCH_POINTS} values per request."
METRIC_HELP = 'Default "loss". 1-100 letters, digits, or _ . / - (e.g. val/loss, lr).'
TIMESTAMP_HELP = "ISO 8601, 2000-01-01 to a day from now (400 otherwise); server time if omitted."
VALUES_HELP = (
    'Several metrics at this step, e.g. {"loss": 0.31, "lr": 0.0003}, instead of loss_value '
    "and metric; each name as `metric` (1-100 letters, digits, or _ . / -; 400 otherwise)."
)


class PointSerializer(serializers.Serializer):
    """A stored point. Declared field by field: a ModelSerializer rebuilds its fields from the
    model on every use, which cost more than the rest of a single-point write."""

    id = serializers.IntegerField(read_only=True)
    simulation_id = serializers.IntegerField(read_only=True)
    step = serializers.IntegerField(read_only=True)
    timestamp = serializers.DateTimeField(read_only=True)
    loss_value = serializers.FloatField(read_only=True)
    metric = serializers.CharField(read_only=True)


class PointPageSerializer(serializers.Serializer):
    """A cursor page of points (follow `next`)."""

    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = PointSerializer(many=True)


_POINT_SERIALIZER = PointSerializer()


def point_representation(point) -> dict:
    """`PointSerializer(point).data`, from one shared instance: a new serializer deep-copies its
    fields, which cost more than the rest of a single-point response."""
    return _POINT_SERIALIZER.to_representation(point)


class PointInputSerializer(serializers.Serializer):
    """Documents the single-point body; `parse_point` validates it (the batch's rules)."""

    simulation_id = serializers.IntegerField(min_value=1, max_value=2**63 - 1)
    loss_value = serializers.FloatField(help_text="The value, whatever the metric; finite.")
    metric = serializers.RegexField(
        METRIC_PATTERN, max_length=METRIC_MAX_LENGTH, required=False, help_text=METRIC_HELP
    )
    step = serializers.IntegerField(
        min_value=0, max_value=MAX_STEP, required=False, help_text="Omit to take the next step."
    )
    timestamp = serializers.DateTimeField(required=False, help_text=TIMESTAMP_HELP)

    # A single point carries loss_value; `values` is the batch's form (400 here).
    openapi_rules = {"properties": {"values": {"not": {}, "description": "Not allowed here."}}}


class BarePointInputSerializer(PointInputSerializer):
    simulation_id = None


class ValuesField(serializers.DictField):
    def openapi_schema(self, map_child, direction):
        return {
            "type": "object",
            "additionalProperties": map_child(self.child),
            "minProperties": 1,
            "description": self.help_text,
        }


class BatchPointSerializer(serializers.Serializer):
    step = serializers.IntegerField(min_value=0, max_value=MAX_STEP)
    loss_value = serializers.FloatField(required=False, help_text="With `metric`, or `values`.")
    metric = serializers.RegexField(
        METRIC_PATTERN, max_length=METRIC_MAX_LENGTH, required=False, help_text=METRIC_HELP
    )
    values = ValuesField(child=serializers.FloatField(), required=False, help_text=VALUES_HELP)
    timestamp = serializers.DateTimeField(required=False, help_text=TIMESTAMP_HELP)

    # Either loss_value (and metric) or values, never both and never neither.
    openapi_rules = {
        "oneOf": [
            {"required": ["loss_value"], "properties": {"values": {"not": {}}}},
            {
                "required": ["values"],
                "properties": {"loss_value": {"not": {}}, "metric": {"not": {}}},
            },
        ]
    }


class BatchInputSerializer(serializers.Serializer):
    """Documents the batch body; `parse_point_batch` validates it (10,000 points must not pay
    for 10,000 serializer instances)."""

    # A ListField (not many=True) so the schema shows minItems/maxItems.
    points = serializers.ListField(
        child=BatchPointSerializer(),
        min_length=1,
        max_length=MAX_BATCH_POINTS,
        help_text=f"At most {MAX_BATCH_POINTS} values in all; a metric and step given twice "
        "must carry the same value (400 otherwise).",
    )


class BatchResultSerializer(serializers.Serializer):
    stored = serializers.IntegerField(help_text="Values stored (a point with values: several).")
    duplicates = serializers.IntegerField(help_text="Values already stored the same.")


# --- The one point validator, for single points and batches ------------------------------------

_ABSENT = object()
_valid_metric = re.compile(METRIC_PATTERN).fullmatch


class InvalidPoint(serializers.ValidationError):
    """A refused point; `nonfinite` is (metric, step) when a value was NaN or infinite."""

    def __init__(self, detail, *, nonfinite=None):
        super().__init__(detail)
        self.nonfinite = nonfinite


def _finite(value) -> bool:
    if type(value) is not float and type(value) is not int:
        return False
    try:
        return math.isfinite(value) and math.isfinite(float(value))
    except OverflowError:  # an integer too large for a float: 10**400
        return False


def _fast_point(item, now: datetime, latest: datetime, step=_ABSENT) -> list[Point] | None:
    """The common case, a valid point, with as little work as possible: its values as Points
    (step None when absent); None means "look closer" (`_point_errors` says what is wrong)."""
    if type(item) is not dict:
        return None
    try:
        step = item.get("step", _ABSENT)
        if step is _ABSENT:
            step = None
        elif type(step) is not int or not 0 <= step <= MAX_STEP:
            return None
        stamp = item.get("timestamp", _ABSENT)
        if stamp is _ABSENT:
            timestamp = now
        else:
            if type(stamp) is not str:
                return None
            timestamp = datetime.fromisoformat(stamp)
            if timestamp.tzinfo is None:
                timestamp = timestamp.replace(tzinfo=UTC)
            if not EARLIEST_TIMESTAMP <= timestamp <= latest:
                return None
        values = item.get("values", _ABSENT)
        if values is _ABSENT:
            loss, metric = item["loss_value"], item.get("metric", DEFAULT_METRIC)
            if not _finite(loss) or type(metric) is not str or not _valid_metric(metric):
                return None
            return [Point(step, float(loss), timestamp, metric)]
        if type(values) is not dict or not values or "loss_value" in item or "metric" in item:
            return None
        points = []
        for metric, value in values.items():
            if not _finite(value) or not _valid_metric(metric):
                return None
            points.append(Point(step, float(value), timestamp, metric))
        return points
    except (TypeError, ValueError, KeyError, OverflowError):
        return None


def _point_errors(item, now: datetime, *, step_required: bool) -> tuple[dict, tuple | None]:
    """Why `_fast_point` refused `item`: field errors, and (metric, step) of a non-finite
    value."""
    if not isinstance(item, dict):
        return {"non_field_errors": ["Must be an object with step and loss_value."]}, None
    errors: dict[str, list[str]] = {}
    nonfinite = None
    step = item.get("step", _ABSENT)
    if step is _ABSENT:
        if step_required:
            errors["step"] = [ERR_REQUIRED]
    elif type(step) is not int or not 0 <= step <= MAX_STEP:
        errors["step"] = [ERR_STEP]
    stamp = item.get("timestamp", _ABSENT)
    if stamp is not _ABSENT:
        try:
            timestamp = datetime.fromisoformat(stamp)
            if timestamp.tzinfo is None:
                timestamp = timestamp.replace(tzinfo=UTC)
            if not EARLIEST_TIMESTAMP <= timestamp <= now + FUTURE_TOLERANCE:
                errors["timestamp"] = [ERR_TIMESTAMP_RANGE]
        except OverflowError:  # a real date-time, beyond year 1..9999 in UTC
            errors["timestamp"] = [ERR_TIMESTAMP_RANGE]
        except (TypeError, ValueError):
            errors["timestamp"] = [ERR_TIMESTAMP]
    step_for_guard = step if type(step) is int else None
    values = item.get("values", _ABSENT)
    if values is _ABSENT:
        metric = item.get("metric", DEFAULT_METRIC)
        if type(metric) is not str or not _valid_metric(metric):
            errors["metric"] = [ERR_METRIC]
        if "loss_value" not in item:
            errors["loss_value"] = [ERR_REQUIRED]
        elif not _finite(item["loss_value"]):
            errors["loss_value"] = [ERR_NOT_FINITE]
            if type(item["loss_value"]) in (int, float) and "metric" not in errors:
                nonfinite = (metric, step_for_guard)
    elif "loss_value" in item or "metric" in item:
        errors["values"] = [ERR_VALUES_OR_LOSS]
    elif type(values) is not dict or not values:
        errors["values"] = [ERR_VALUES]
    else:
        bad = {}  # the first MAX_REPORTED_ERRORS names: an answer no larger than its request
        for metric, value in values.items():
            if not _valid_metric(metric):
                if len(bad) < MAX_REPORTED_ERRORS:
                    bad[metric[:METRIC_MAX_LENGTH]] = [ERR_METRIC]
            elif not _finite(value):
                if len(bad) < MAX_REPORTED_ERRORS:
                    bad[metric] = [ERR_NOT_FINITE]
                if type(value) in (int, float) and nonfinite is None:
                    nonfinite = (metric, step_for_guard)
        if bad:
            errors["values"] = [bad]
    return errors, nonfinite


def parse_point(data, *, with_simulation: bool = True) -> dict:
    """Validate a single-point body by the batch's rules (one validator for both): returns the
    keyword arguments of `point_add` (simulation_id when `with_simulation`)."""
    now = timezone.now()
    fields = {}
    errors: dict = {}
    if with_simulation:
        simulation_id = data.get("simulation_id") if isinstance(data, dict) else None
        if type(simulation_id) is not int or not 1 <= simulation_id < 2**63:
            errors["simulation_id"] = [ERR_SIMULATION_ID]
        fields["simulation_id"] = simulation_id
    points = _fast_point(data, now, now + FUTURE_TOLERANCE)
    if points is None or "values" in data or errors:
        point_errors, nonfinite = _point_errors(data, now, step_required=False)
        if isinstance(data, dict) and "values" in data and "values" not in point_errors:
            point_errors["values"] = [ERR_SINGLE_VALUES]
        raise InvalidPoint({**errors, **point_errors}, nonfinite=nonfinite if not errors else None)
    (point,) = points
    fields.update(loss_value=point.loss_value, metric=point.metric)
    if point.step is not None:
        fields["step"] = point.step
    if "timestamp" in data:
        fields["timestamp"] = point.timestamp
    return fields


class Batch(NamedTuple):
    points: list[Point]  # each (metric, step) once
    repeats: int  # values sent again within the batch, the same: duplicates


def parse_point_batch(data) -> Batch:
    """Validate a batch body fast; errors name the index of each bad point (the first 20).
    Points in the `values` form become one Point per value; at most 10,000 values in all."""
    points = data.get("points") if isinstance(data, dict) else None
    if not isinstance(points, list) or not points:
        raise serializers.ValidationError({"points": ["A non-empty list of points is required."]})
    if len(points) > MAX_BATCH_POINTS:
        raise serializers.ValidationError(
            {"points": [f"At most {MAX_BATCH_POINTS} points per request; got {len(points)}."]}
        )
    parsed, errors, seen = [], {}, {}
    repeats = 0
    nonfinite = None
    now = timezone.now()
    latest = now + FUTURE_TOLERANCE
    for index, item in enumerate(points):
        item_points = _fast_point(item, now, latest)
        item_errors = {}
        if item_points is None or item_points[0].step is None:
            item_errors, item_nonfinite = _point_errors(item, now, step_required=True)
            nonfinite = nonfinite or item_nonfinite
        else:
            for point in item_points:
                key = (point.metric, point.step)
                if key in seen and seen[key] != point.loss_value:
                    item_errors = {"step": [ERR_TWICE]}
        if item_errors:
            errors[str(index)] = item_errors
            if len(errors) >= MAX_REPORTED_ERRORS:
                break
            continue
        for point in item_points:
            key = (point.metric, point.step)
            if key in seen:
                repeats += 1
            else:
                seen[key] = point.loss_value
                parsed.append(point)
        if len(parsed) + repeats > MAX_BATCH_POINTS:
            raise serializers.ValidationError({"points": [ERR_TOO_MANY_VALUES]})
    if errors:
        raise InvalidPoint({"points": errors}, nonfinite=nonfinite)
    return Batch(parsed, repeats)


MAX_GRAPH_METRICS = 10
DATA_PAGE_DEFAULT, DATA_PAGE_MAX = 1000, 10_000
MAX_COMPARE_SIMULATIONS = 20


class MetricField(serializers.RegexField):
    def __init__(self, **kwargs):
        kwargs.setdefault("default", DEFAULT_METRIC)
        kwargs.setdefault("help_text", METRIC_HELP)
        super().__init__(METRIC_PATTERN, max_length=METRIC_MAX_LENGTH, **kwargs)


class CommaListField(serializers.CharField):
    """`a,b,c` in a query string, each item validated by `item`, at most `max_items`. The
    parameter repeated (`a&x=b`, how OpenAPI's exploded arrays and `requests` send a list) is
    the same list, not its last item."""

    def __init__(self, *, item, max_items: int, **kwargs):
        self.item, self.max_items = item, max_items
        super().__init__(**kwargs)

    def get_value(self, dictionary):
        if hasattr(dictionary, "getlist"):
            sent = dictionary.getlist(self.field_name)
            if len(sent) > 1:
                return ",".join(sent)
        return super().get_value(dictionary)

    def to_internal_value(self, data):
        text = super().to_internal_value(data)
        items = [part.strip() for part in text.split(",")]
        if len(items) > self.max_items:
            raise serializers.ValidationError(f"At most {self.max_items} items.")
        values = [self.item.run_validation(part) for part in items]
        return list(dict.fromkeys(values))  # in order, each once

    def openapi_schema(self, map_child, direction):
        items = map_child(self.item)
        items = {k: v for k, v in items.items() if k not in ("default", "description")}
        schema = {"type": "array", "items": items, "minItems": 1, "maxItems": self.max_items}
        if self.help_text:
            schema["description"] = self.help_text
        if self.default not in (serializers.empty, None):
            schema["default"] = [self.default]
        return schema


class WindowQuerySerializer(serializers.Serializer):
    max_points = serializers.IntegerField(
        min_value=GRAPH_MIN_POINTS, max_value=GRAPH_MAX_POINTS, default=GRAPH_DEFAULT_POINTS
    )
    from_step = serializers.IntegerField(
        min_value=0, max_value=MAX_STEP, required=False, help_text="The window's first step."
    )
    to_step = serializers.IntegerField(
        min_value=0,
        max_value=MAX_STEP,
        required=False,
        help_text="The window's last step; not less than from_step (400 otherwise).",
    )

    def validate(self, attrs):
        if attrs.get("from_step", 0) > attrs.get("to_step", MAX_STEP):
            raise serializers.ValidationError({"to_step": ["Must not be less than from_step."]})
        return attrs


class GraphQuerySerializer(WindowQuerySerializer):
    metric = CommaListField(
        item=MetricField(),
        max_items=MAX_GRAPH_METRICS,
        default=DEFAULT_METRIC,
        help_text=f"One metric, or up to {MAX_GRAPH_METRICS} separated by commas.",
    )

    def validate(self, attrs):
        attrs = super().validate(attrs)
        metric = attrs.pop("metric")
        attrs["metrics"] = tuple([metric] if isinstance(metric, str) else metric)
        return attrs


class CompareQuerySerializer(WindowQuerySerializer):
    simulations = CommaListField(
        item=serializers.IntegerField(min_value=1, max_value=2**63 - 1),
        max_items=MAX_COMPARE_SIMULATIONS,
        help_text=f"Simulation ids separated by commas, at most {MAX_COMPARE_SIMULATIONS}.",
    )
    metric = MetricField()


class StreamQuerySerializer(serializers.Serializer):
    metric = MetricField()
    since_step = serializers.IntegerField(min_value=-1, max_value=MAX_STEP, default=-1)
    limit = serializers.IntegerField(min_value=1, max_value=10_000, default=10_000)


class DataQuerySerializer(serializers.Serializer):
    metric = MetricField(
        required=False,
        default=None,
        help_text='JSON pages: default "loss". CSV: without it, every series in long form.',
    )
    cursor = serializers.CharField(
        required=False, help_text="From a page's next/previous link (400 for any other)."
    )
    limit = serializers.IntegerField(
        min_value=1,
        max_value=DATA_PAGE_MAX,
        required=False,
        help_text=f"Points per page ({DATA_PAGE_DEFAULT:,}; at most {DATA_PAGE_MAX:,}).",
    )


class GraphPointSerializer(serializers.Serializer):
    step = serializers.IntegerField()
    loss = serializers.FloatField()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ChartPointList(serializers.ListSerializer):
    """A chart's points, thousands per answer (10,000 in a compare): each built as
    `ChartPointSerializer` would build it, without a serializer pass per point, which cost
    seven times as much as the dicts themselves. The selectors give times as epoch
    microseconds (`convergence.selectors.charts`)."""

    def to_representation(self, data):
        field = self.child.fields["timestamp"].to_representation
        if field(_EPOCH) == "1970-01-01T00:00:00Z":  # the field writes UTC times as ISO + Z
            timestamp = utc_iso
        else:

            def timestamp(microseconds):
                return field(utc_datetime(microseconds))

        return [
            {
                "step": int(point["step"]),
                "loss": float(point["loss"]),
                "timestamp": None if point["timestamp"] is None else timestamp(point["timestamp"]),
            }
            for point in data
        ]


class ChartPointSerializer(GraphPointSerializer):
    timestamp = serializers.DateTimeField(
        allow_null=True,
        help_text="When the point was taken. A downsampled bucket's min and max carry a time "
        "interpolated by step between its first and last point; null for rollups written "
        "before times were kept.",
    )

    class Meta:
        list_serializer_class = ChartPointList


class SeriesGraphSerializer(serializers.Serializer):
    metric = serializers.CharField()
    from_step = serializers.IntegerField(allow_null=True)
    to_step = serializers.IntegerField(allow_null=True)
    raw_points = serializers.IntegerField(help_text="Points stored in the window.")
    returned_points = serializers.IntegerField()
    downsampled = serializers.BooleanField()
    bucket_width = serializers.IntegerField(help_text="Steps per bucket when downsampled.")
    rollups_only = serializers.BooleanField(
        help_text="The run was compacted (`manage.py compact`): its raw points are gone and the "
        "chart comes from rollup buckets (first, min, max, last) even for a small window; "
        "`raw_points` still counts the points the window held."
    )
    points = ChartPointSerializer(many=True)


class GraphSerializer(SeriesGraphSerializer):
    """One metric: its chart at the top level (as before); several: one chart per metric under
    `series`, and no top-level chart fields."""

    simulation_id = serializers.IntegerField()
    status = serializers.CharField()
    is_complete = serializers.BooleanField()
    series = SeriesGraphSerializer(many=True, required=False)

    def get_fields(self):
        fields = super().get_fields()
        for name in SeriesGraphSerializer._declared_fields:
            fields[name].required = False
        return fields

    def to_representation(self, instance):
        data = super().to_representation(instance)
        return {key: value for key, value in data.items() if key in instance}


class CompareRunSerializer(SeriesGraphSerializer):
    metric = None
    simulation_id = serializers.IntegerField()
    name = serializers.CharField()
    status = serializers.CharField()
    is_complete = serializers.BooleanField()
    machine = serializers.IntegerField(allow_null=True)
    machine_name = serializers.CharField(allow_null=True)


class CompareSerializer(serializers.Serializer):
    metric = serializers.CharField()
    max_points = serializers.IntegerField()
    simulations = CompareRunSerializer(many=True)


class MetricSummarySerializer(serializers.Serializer):
    metric = serializers.CharField()
    points = serializers.IntegerField()
    first_step = serializers.IntegerField()
    last_step = serializers.IntegerField()
    latest = serializers.FloatField()
    min = serializers.FloatField()
    max = serializers.FloatField()


class MetricsSerializer(serializers.Serializer):
    simulation_id = serializers.IntegerField()
    status = serializers.CharField()
    metrics = MetricSummarySerializer(many=True)


class StreamPointSerializer(GraphPointSerializer):
    timestamp = serializers.DateTimeField()


class StreamSerializer(serializers.Serializer):
    simulation_id = serializers.IntegerField()
    metric = serializers.CharField()
    status = serializers.CharField()
    is_complete = serializers.BooleanField()
    since_step = serializers.IntegerField()
    last_step = serializers.IntegerField()
    has_more = serializers.BooleanField()
    points = StreamPointSerializer(many=True)
