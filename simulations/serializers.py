from django.core.validators import ProhibitNullCharactersValidator
from rest_framework import serializers

from convergence.selectors import simulation_point_stats
from machines.models import Machine
from machines.serializers import MachineSerializer
from simsched.db import MAX_ID, is_storable_id
from simsched.exceptions import ApplicationError
from simsched.serializers import (
    StrictBooleanField,
    StrictIntegerField,
    StrictModelSerializer,
    TextField,
)
from simulations.guard_rules import (
    MAX_GUARD_NUMBER,
    MAX_STALL_SECONDS,
    MAX_WINDOW,
    METRIC_NAME,
    normalize_guards,
)
from simulations.logs import (
    LOGS_PAGE_DEFAULT,
    LOGS_PAGE_MAX,
    MAX_LINE_CHARS,
    MAX_LINES_PER_REQUEST,
    MAX_SEQ,
    LogInput,
    printable,
)
from simulations.models import (
    MAX_COMMAND_ARGS,
    MAX_ENV_VARS,
    MAX_LAUNCH_STRING,
    PRIORITY_MAX,
    PRIORITY_MIN,
    LogLine,
    Simulation,
)
from simulations.permissions import can_see_env
from simulations.selectors import simulation_wait_reasons

MAX_DURATION_MAX = 366 * 24 * 3600
PREEMPT_GRACE_MAX = 24 * 3600


def _guards_schema() -> dict:
    metric = {"type": "string", "pattern": METRIC_NAME.pattern, "maxLength": 100}
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "nan": {"type": "boolean", "description": "Stop the run at a NaN or infinite value."},
            "stall_seconds": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_STALL_SECONDS,
                "nullable": True,
                "description": "Stop the run after this long without a point; null: off.",
            },
            "plateau": {
                "type": "object",
                "nullable": True,
                "additionalProperties": False,
                "required": ["window"],
                "properties": {
                    "metric": metric,
                    "window": {"type": "integer", "minimum": 1, "maximum": MAX_WINDOW},
                    "min_delta": {"type": "number", "minimum": 0, "maximum": MAX_GUARD_NUMBER},
                },
            },
            "divergence": {
                "type": "object",
                "nullable": True,
                "additionalProperties": False,
                "required": ["factor"],
                "properties": {
                    "metric": metric,
                    "factor": {
                        "type": "number",
                        "minimum": 1,
                        "exclusiveMinimum": True,
                        "maximum": MAX_GUARD_NUMBER,
                    },
                },
            },
        },
    }


class GuardsField(serializers.JSONField):
    """The guards object; `normalize_guards` validates it, the schema states the same rules."""

    def openapi_schema(self, map_child, direction):
        if direction != "request":
            return None
        return {**_guards_schema(), "description": self.help_text}


class EnvField(serializers.DictField):
    def openapi_schema(self, map_child, direction):
        return {
            "type": "object",
            "additionalProperties": map_child(self.child),
            "maxProperties": MAX_ENV_VARS,
            "description": self.help_text,
        }


class LogTextField(serializers.CharField):
    """Any text: a program's output may hold NULs (stored as U+FFFD), which CharField refuses."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.validators = [
            v for v in self.validators if not isinstance(v, ProhibitNullCharactersValidator)
        ]


class WaitReasonSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class ProgressSerializer(serializers.Serializer):
    points = serializers.IntegerField()
    latest_loss = serializers.FloatField(allow_null=True)
    best_loss = serializers.FloatField(allow_null=True)
    last_step = serializers.IntegerField(allow_null=True)


class SimulationListSerializer(serializers.ListSerializer):
    """Looks up progress and wait reasons for a whole page at once."""

    def to_representation(self, data):
        items = list(data.all() if hasattr(data, "all") else data)
        self.child.context["progress"] = simulation_point_stats([s.pk for s in items])
        self.child.context["wait_reasons"] = simulation_wait_reasons(items)
        return super().to_representation(items)


class MachineReferenceField(serializers.PrimaryKeyRelatedField):
    """A machine's id: an integer, never its digits as text, a float, a boolean or a number no
    primary key can be (DRF's field would look up pk=1.5 as machine 1, and pass
    1e400 to the database)."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("incorrect_type", data_type=type(data).__name__)
        if not is_storable_id(data):
            self.fail("does_not_exist", pk_value=data)
        return super().to_internal_value(data)

    def openapi_schema(self, map_child, direction):
        schema = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
        if self.allow_null:
            schema["nullable"] = True
        if self.help_text:
            schema["description"] = f"{self.help_text} It must exist (400 naming the field)."
        return schema


class SimulationSerializer(StrictModelSerializer):
    owner = serializers.CharField(
        source="owner.username", read_only=True, default=None, allow_null=True
    )
    machine_name = serializers.CharField(
        source="machine.name", read_only=True, default=None, allow_null=True
    )
    pinned_machine = MachineReferenceField(
        queryset=Machine.objects.all(),
        required=False,
        allow_null=True,
        help_text="Run only on this machine.",
    )
    machine_id = MachineReferenceField(
        queryset=Machine.objects.all(),
        required=False,
        allow_null=True,
        write_only=True,
        source="pinned_machine",
        help_text="Alias of pinned_machine (the original API's field).",
    )
    status = serializers.ChoiceField(
        choices=Simulation.Status.choices,
        required=False,
        help_text="On update: running, finished, failed or cancelled, following the lifecycle.",
    )
    priority = StrictIntegerField(min_value=PRIORITY_MIN, max_value=PRIORITY_MAX, required=False)
    required_gpus = StrictIntegerField(min_value=0, max_value=1024, required=False)
    required_memory = StrictIntegerField(min_value=1, max_value=1_000_000, required=False)
    required_cpu_cores = StrictIntegerField(min_value=0, max_value=100_000, required=False)
    max_duration = StrictIntegerField(
        min_value=1,
        max_value=MAX_DURATION_MAX,
        required=False,
        allow_null=True,
        help_text="Seconds of running before it ends timed_out; null for no limit.",
    )
    guards = GuardsField(
        required=False,
        help_text='E.g. {"nan": true, "stall_seconds": 600, "plateau": {"metric": "loss", '
        '"window": 5000, "min_delta": 0.001}, "divergence": {"metric": "loss", "factor": 10}}; '
        "keys left out take the fleet's defaults (SIMSCHED_DEFAULT_GUARDS).",
    )
    preemptible = StrictBooleanField(required=False)
    preempt_grace = StrictIntegerField(min_value=0, max_value=PREEMPT_GRACE_MAX, required=False)
    resume_step = serializers.SerializerMethodField()
    command = serializers.ListField(
        child=TextField(allow_blank=True, trim_whitespace=False, max_length=MAX_LAUNCH_STRING),
        max_length=MAX_COMMAND_ARGS,
        required=False,
        help_text="What the machine's agent runs: a list of arguments (changeable while pending).",
    )
    env = EnvField(
        child=TextField(allow_blank=True, trim_whitespace=False, max_length=MAX_LAUNCH_STRING),
        required=False,
        help_text=(
            f"Environment variables for the command (at most {MAX_ENV_VARS}): names of letters, "
            "digits and _, not starting with a digit or SIMSCHED_. Secret: shown only to the "
            "owner, staff and the agent of the simulation's machine."
        ),
    )
    working_dir = TextField(
        allow_blank=True, trim_whitespace=False, max_length=1000, required=False
    )
    running_seconds = serializers.FloatField(read_only=True, allow_null=True)
    # Derived, so no digit cap: a long run on a costly machine must not make the list a 500.
    cost = serializers.DecimalField(max_digits=None, decimal_places=4, read_only=True)
    wait_reason = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Simulation
        list_serializer_class = SimulationListSerializer
        # The one-active-simulation-per-machine constraint is the scheduler's and the
        # database's business, not something a client's input can violate.
        validators = []
        fields = [
            "id",
            "name",
            "owner",
            "status",
            "priority",
            "required_gpus",
            "required_memory",
            "required_cpu_cores",
            "machine",
            "machine_name",
            "pinned_machine",
            "machine_id",
            "command",
            "env",
            "working_dir",
            "wait_reason",
            "progress",
            "created_at",
            "updated_at",
            "scheduled_at",
            "started_at",
            "finished_at",
            "last_heartbeat_at",
            "attempts",
            "failure_reason",
            "running_seconds",
            "hourly_cost",
            "cost",
            "max_duration",
            "guards",
            "preemptible",
            "preempt_grace",
            "stopped_by",
            "stop_step",
            "stop_reason",
            "saved_hours",
            "saved_cost",
            "preempt_requested_at",
            "preemptions",
            "resume_step",
        ]
        read_only_fields = [
            "stopped_by",
            "stop_step",
            "stop_reason",
            "saved_hours",
            "saved_cost",
            "preempt_requested_at",
            "preemptions",
            "machine",
            "created_at",
            "updated_at",
            "scheduled_at",
            "started_at",
            "finished_at",
            "last_heartbeat_at",
            "attempts",
            "failure_reason",
            "hourly_cost",
        ]

    def to_representation(self, simulation):
        data = super().to_representation(simulation)
        request = self.context.get("request")
        if request is None or not can_see_env(request.user, simulation):
            data.pop("env", None)
        return data

    def validate_status(self, value):
        if self.instance is None and value != Simulation.Status.PENDING:
            raise serializers.ValidationError("A new simulation starts pending.")
        return value

    def validate_guards(self, value):
        try:
            normalize_guards(value)
        except ApplicationError as exc:
            raise serializers.ValidationError(exc.fields["guards"]) from exc
        return value

    def get_resume_step(self, simulation) -> int:
        """The step to resume from (last stored step + 1; 0 for a fresh run)."""
        last = self.get_progress(simulation)["last_step"]
        return 0 if last is None else last + 1

    def get_wait_reason(self, simulation) -> WaitReasonSerializer(allow_null=True):
        reasons = self.context.get("wait_reasons")
        if reasons is None:
            reasons = simulation_wait_reasons([simulation])
        return reasons.get(simulation.pk)

    def get_progress(self, simulation) -> ProgressSerializer:
        progress = self.context.get("progress")
        if progress is None:
            progress = simulation_point_stats([simulation.pk])
        found = progress.get(simulation.pk, {})
        return {
            "points": found.get("points", 0),
            "latest_loss": found.get("latest_loss"),
            "best_loss": found.get("best_loss"),
            "last_step": found.get("last_step"),
        }


class SimulationCreateSerializer(SimulationSerializer):
    """POST /simulations: a new simulation starts pending (the only status it may name)."""

    status = serializers.ChoiceField(
        choices=[(Simulation.Status.PENDING, "Pending")],
        required=False,
        help_text="A new simulation starts pending.",
    )


class BareSqlCreateSerializer(serializers.Serializer):
    name = TextField(max_length=200)


class FailSerializer(serializers.Serializer):
    reason = TextField(max_length=500, required=False, allow_blank=True)


class HeartbeatSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    stop = serializers.BooleanField(
        help_text="True once the simulation has ended (cancelled, or stopped by a guard or its "
        "time limit) or is being preempted: stop working."
    )
    preempt = serializers.BooleanField(
        help_text="True when the stop is a preemption: the run is requeued after its grace and "
        "resumes from resume_step."
    )


class DetailedMachineSerializer(MachineSerializer):
    class Meta(MachineSerializer.Meta):
        fields = [
            f
            for f in MachineSerializer.Meta.fields
            if f not in ("current_simulation", "created_at", "updated_at")
        ]


class DetailedSimulationSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    status = serializers.CharField()
    priority = StrictIntegerField()
    required_gpus = StrictIntegerField()
    required_memory = StrictIntegerField()
    required_cpu_cores = StrictIntegerField()
    pinned_machine_id = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    scheduled_at = serializers.DateTimeField(allow_null=True)
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    last_heartbeat_at = serializers.DateTimeField(allow_null=True)
    attempts = serializers.IntegerField()
    failure_reason = serializers.CharField(allow_blank=True)
    hourly_cost = serializers.DecimalField(max_digits=10, decimal_places=2, allow_null=True)
    machine = DetailedMachineSerializer(allow_null=True, help_text="Its machine, or null.")


class BudgetUsageSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    user = serializers.CharField(allow_null=True, help_text="The user it applies to, or null.")
    group = serializers.CharField(allow_null=True, help_text="The group it applies to, or null.")
    month_start = serializers.DateTimeField(help_text="Spend counts from here (UTC).")
    monthly_budget = serializers.DecimalField(max_digits=12, decimal_places=2, allow_null=True)
    spent = serializers.DecimalField(max_digits=14, decimal_places=2)
    reserved = serializers.DecimalField(
        max_digits=14,
        decimal_places=2,
        help_text="What the rest of running simulations' max_duration would cost.",
    )
    gpu_cap = serializers.IntegerField(allow_null=True)
    gpus_in_use = serializers.IntegerField()


class LogLineSerializer(serializers.Serializer):
    seq = serializers.IntegerField(min_value=0, max_value=MAX_SEQ)
    stream = serializers.ChoiceField(choices=LogLine.Stream.choices)
    line = LogTextField(
        allow_blank=True,
        trim_whitespace=False,
        max_length=MAX_LINE_CHARS,
        help_text="Without its newline. NUL characters are stored as U+FFFD.",
    )


class LogBatchSerializer(serializers.Serializer):
    """Documents the agent's log body; `parse_log_batch` validates it."""

    lines = serializers.ListField(
        child=LogLineSerializer(), min_length=1, max_length=MAX_LINES_PER_REQUEST
    )


class LogAppendResultSerializer(serializers.Serializer):
    stored = serializers.IntegerField()
    duplicates = serializers.IntegerField()


def parse_log_batch(data) -> list[LogInput]:
    """Validate an agent's log lines (a program prints NULs and broken UTF-8 too: they are
    stored replaced, not refused); errors name each bad line's index."""
    lines = data.get("lines") if isinstance(data, dict) else None
    if not isinstance(lines, list) or not lines:
        raise serializers.ValidationError({"lines": ["A non-empty list of lines is required."]})
    if len(lines) > MAX_LINES_PER_REQUEST:
        raise serializers.ValidationError(
            {"lines": [f"At most {MAX_LINES_PER_REQUEST} lines per request; got {len(lines)}."]}
        )
    parsed, errors = [], {}
    for index, item in enumerate(lines):
        item_errors = _log_line_errors(item)
        if item_errors:
            errors[str(index)] = item_errors
            continue
        parsed.append(LogInput(item["seq"], item["stream"], printable(item["line"])))
    if errors:
        raise serializers.ValidationError({"lines": errors})
    return parsed


def _log_line_errors(item) -> dict:
    if not isinstance(item, dict):
        return {"non_field_errors": ["Must be an object with seq, stream and line."]}
    errors = {}
    seq, stream, line = item.get("seq"), item.get("stream"), item.get("line")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        errors["seq"] = [f"Must be an integer from 0 to {MAX_SEQ}."]
    if stream not in LogLine.Stream.values:
        errors["stream"] = ["Must be stdout or stderr."]
    if not isinstance(line, str) or len(line) > MAX_LINE_CHARS:
        errors["line"] = [f"Must be a string of at most {MAX_LINE_CHARS} characters."]
    return errors


class LogsQuerySerializer(serializers.Serializer):
    since = serializers.IntegerField(
        min_value=-1, max_value=MAX_SEQ, default=-1, help_text="The last seq you have."
    )
    limit = serializers.IntegerField(
        min_value=1, max_value=LOGS_PAGE_MAX, default=LOGS_PAGE_DEFAULT
    )


class LogPageLineSerializer(serializers.Serializer):
    seq = serializers.IntegerField()
    stream = serializers.CharField()
    line = serializers.CharField()
    created_at = serializers.DateTimeField()


class LogPageSerializer(serializers.Serializer):
    simulation_id = serializers.IntegerField()
    since = serializers.IntegerField()
    next_since = serializers.IntegerField(help_text="Pass as `since` for the next page.")
    has_more = serializers.BooleanField()
    last_seq = serializers.IntegerField(
        help_text="The newest line's seq, or -1 (a new agent run continues after it)."
    )
    lines = LogPageLineSerializer(many=True)
