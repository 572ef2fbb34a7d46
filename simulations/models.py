import re
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from machines.models import Machine
from simulations.guard_rules import default_guards

PRIORITY_MIN, PRIORITY_MAX = -1000, 1000

MAX_COMMAND_ARGS = 256
MAX_ENV_VARS = 256
MAX_LAUNCH_STRING = 32_768
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
# Set by the agent for the child (SIMSCHED_URL, SIMSCHED_TOKEN, ...): not the simulation's to set.
RESERVED_ENV_PREFIX = "SIMSCHED_"

ERR_COMMAND = "Must be a list of at most {n} strings."
ERR_ENV = "Must be an object of at most {n} string values."
ERR_ENV_NAME = "{name!r} is not an environment variable name (letters, digits, _)."
ERR_ENV_RESERVED = "{name!r}: names starting with SIMSCHED_ are set by the agent."
ERR_TEXT = "Strings must be at most {n} characters of valid text, without NUL characters."


def _check_text(value: str, limit: int = MAX_LAUNCH_STRING) -> None:
    """PostgreSQL refuses NUL and unpaired surrogates; refuse them here, as a 400."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(ERR_TEXT.format(n=limit)) from None
    if "\x00" in value or len(value) > limit:
        raise ValidationError(ERR_TEXT.format(n=limit))


def validate_command(value) -> None:
    if not isinstance(value, list) or len(value) > MAX_COMMAND_ARGS:
        raise ValidationError(ERR_COMMAND.format(n=MAX_COMMAND_ARGS))
    for argument in value:
        if not isinstance(argument, str):
            raise ValidationError(ERR_COMMAND.format(n=MAX_COMMAND_ARGS))
        _check_text(argument)


def validate_env(value) -> None:
    if not isinstance(value, dict) or len(value) > MAX_ENV_VARS:
        raise ValidationError(ERR_ENV.format(n=MAX_ENV_VARS))
    for name, text in value.items():
        if not ENV_NAME.fullmatch(name):
            raise ValidationError(ERR_ENV_NAME.format(name=name[:100]))
        if name.upper().startswith(RESERVED_ENV_PREFIX):
            raise ValidationError(ERR_ENV_RESERVED.format(name=name))
        if not isinstance(text, str):
            raise ValidationError(ERR_ENV.format(n=MAX_ENV_VARS))
        _check_text(text)


def validate_working_dir(value: str) -> None:
    _check_text(value, 1000)


class Simulation(models.Model):
    """A unit of work that needs one machine, from queued to a final state."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SCHEDULED = "scheduled", "Scheduled"
        RUNNING = "running", "Running"
        FINISHED = "finished", "Finished"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        TIMED_OUT = "timed_out", "Timed out"

    # The only place that knows the lifecycle. Pending <- scheduled/running is a requeue (the
    # agent went silent, or the run was preempted); running -> timed_out is max_duration.
    TRANSITIONS = {
        Status.PENDING: {Status.SCHEDULED, Status.CANCELLED},
        Status.SCHEDULED: {Status.RUNNING, Status.PENDING, Status.FAILED, Status.CANCELLED},
        Status.RUNNING: {
            Status.FINISHED,
            Status.FAILED,
            Status.CANCELLED,
            Status.PENDING,
            Status.TIMED_OUT,
        },
        Status.FINISHED: set(),
        Status.FAILED: set(),
        Status.CANCELLED: set(),
        Status.TIMED_OUT: set(),
    }
    ACTIVE = (Status.SCHEDULED, Status.RUNNING)  # holds a machine
    FINAL = (Status.FINISHED, Status.FAILED, Status.CANCELLED, Status.TIMED_OUT)

    class StoppedBy(models.TextChoices):
        """What ended a run early (read by the ops metrics as simsched_guard_stops_total)."""

        NONE = "", "—"
        MAX_DURATION = "max_duration", "Time limit"
        NAN = "nan", "Non-finite value"
        STALL = "stall", "Stalled"
        PLATEAU = "plateau", "Plateau"
        DIVERGENCE = "divergence", "Divergence"

    name = models.CharField(max_length=200)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="simulations",
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    machine = models.ForeignKey(
        Machine,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="simulations",
        help_text="The machine reserved for or running this simulation (kept when it ends).",
    )
    pinned_machine = models.ForeignKey(
        Machine,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="pinned_simulations",
        help_text="If set, the simulation runs only on this machine.",
    )
    priority = models.IntegerField(
        default=0,
        validators=[MinValueValidator(PRIORITY_MIN), MaxValueValidator(PRIORITY_MAX)],
        help_text="Higher runs first; ties run oldest first.",
    )
    required_gpus = models.PositiveIntegerField(default=0)
    required_memory = models.PositiveIntegerField(default=1, help_text="GB.")
    required_cpu_cores = models.PositiveIntegerField(default=0, help_text="0 means any.")
    hourly_cost = models.DecimalField(
        max_digits=10,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="The machine's hourly cost when it was reserved.",
    )
    accrued_cost = models.DecimalField(
        max_digits=14,
        decimal_places=4,
        default=Decimal("0"),
        help_text="Cost of earlier placements that ended in a requeue.",
    )
    attempts = models.PositiveIntegerField(default=0, help_text="Requeues after silent agents.")
    failure_reason = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    # What the machine's agent launches. `env` is secret: only the owner, staff and the agent
    # of the simulation's machine ever see it (never lists for others, logs or socket messages).
    command = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_command],
        help_text='Arguments, e.g. ["python", "train.py"].',
    )
    env = models.JSONField(
        default=dict,
        blank=True,
        validators=[validate_env],
        help_text="Environment variables (secret).",
    )
    working_dir = models.CharField(max_length=1000, blank=True, validators=[validate_working_dir])

    # Limits and guards (simulations/guards.py evaluates them).
    max_duration = models.PositiveIntegerField(
        null=True, blank=True, help_text="Seconds of running before it is timed out."
    )
    guards = models.JSONField(
        default=default_guards, blank=True, help_text="nan, stall_seconds, plateau, divergence."
    )
    guard_state = models.JSONField(
        default=dict, blank=True, help_text="What the guards remember between writes and ticks."
    )
    stopped_by = models.CharField(
        max_length=20, choices=StoppedBy.choices, blank=True, default=StoppedBy.NONE
    )
    stop_step = models.BigIntegerField(null=True, blank=True)
    stop_reason = models.CharField(max_length=500, blank=True)
    saved_hours = models.DecimalField(
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="Machine-hours of max_duration a guard stop did not spend.",
    )
    saved_cost = models.DecimalField(
        max_digits=14,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="USD of max_duration a guard stop did not spend.",
    )

    # Preemption by a higher-priority simulation.
    preemptible = models.BooleanField(default=False)
    preempt_grace = models.PositiveIntegerField(
        default=120, help_text="Seconds a preempted run gets to stop before it is requeued."
    )
    preempt_requested_at = models.DateTimeField(null=True, blank=True)
    preempted_for = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The waiting simulation this one is being preempted for.",
    )
    preemptions = models.PositiveIntegerField(default=0, help_text="Times it was preempted.")

    class Meta:
        db_table = "simulations"
        ordering = ["-created_at", "-id"]
        constraints = [
            # The database refuses a double booking even if application code is wrong.
            models.UniqueConstraint(
                fields=["machine"],
                condition=models.Q(status__in=["scheduled", "running"]),
                name="one_active_simulation_per_machine",
            ),
            models.CheckConstraint(
                condition=~models.Q(status__in=["scheduled", "running"])
                | models.Q(machine__isnull=False),
                name="active_simulation_has_machine",
            ),
            models.CheckConstraint(
                condition=models.Q(
                    status__in=[
                        "pending",
                        "scheduled",
                        "running",
                        "finished",
                        "failed",
                        "cancelled",
                        "timed_out",
                    ]
                ),
                name="simulation_status_valid",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "-priority", "created_at"], name="simulation_queue_idx"),
            models.Index(fields=["status", "last_heartbeat_at"], name="simulation_heartbeat_idx"),
            models.Index(fields=["name"], name="simulation_name_idx"),
            models.Index(fields=["owner", "finished_at"], name="simulation_owner_finished_idx"),
        ]

    def __str__(self) -> str:
        return self.name

    def can_become(self, status: str) -> bool:
        return status in self.TRANSITIONS[self.Status(self.status)]

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL

    @property
    def is_preempting(self) -> bool:
        """Asked to give its machine to a higher-priority simulation, and still holding it."""
        return self.preempt_requested_at is not None and self.status in self.ACTIVE

    @property
    def running_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or timezone.now()
        return max((end - self.started_at).total_seconds(), 0.0)

    @property
    def machine_seconds(self) -> float | None:
        """Time the current (or last) placement has held its machine."""
        if self.scheduled_at is None:
            return None
        end = self.finished_at or timezone.now()
        return max((end - self.scheduled_at).total_seconds(), 0.0)

    def unspent_against_limit(self) -> tuple[Decimal, Decimal] | tuple[None, None]:
        """Machine-hours and USD of its max_duration that it will not spend if it stops now."""
        if self.max_duration is None:
            return None, None
        left = max(self.max_duration - (self.running_seconds or 0.0), 0.0)
        hours = Decimal(left) / Decimal(3600)
        cost = (self.hourly_cost or Decimal("0")) * hours
        return hours.quantize(Decimal("0.0001")), cost.quantize(Decimal("0.0001"))

    @property
    def cost(self) -> Decimal:
        """What the simulation has cost: earlier placements plus the current one."""
        current = Decimal("0")
        if self.hourly_cost is not None and self.machine_seconds is not None:
            current = self.hourly_cost * Decimal(self.machine_seconds) / Decimal(3600)
        return (self.accrued_cost + current).quantize(Decimal("0.0001"))


class Budget(models.Model):
    """What an owner (a user, or every member of a group together) may spend and hold."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="budget",
    )
    group = models.OneToOneField(
        "auth.Group", null=True, blank=True, on_delete=models.CASCADE, related_name="budget"
    )
    monthly_budget = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0"))],
        help_text="USD per calendar month (UTC); empty means no limit.",
    )
    gpu_cap = models.PositiveIntegerField(
        null=True, blank=True, help_text="GPUs in use at once; empty means no limit."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "simulation_budgets"
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(user__isnull=False, group__isnull=True)
                | models.Q(user__isnull=True, group__isnull=False),
                name="budget_for_a_user_or_a_group",
            ),
        ]

    def __str__(self) -> str:
        return f"Budget of {self.owner_label}"

    @property
    def owner_label(self) -> str:
        return f"user {self.user}" if self.user_id else f"group {self.group}"


class LogLine(models.Model):
    """One line of a simulation's stdout or stderr, numbered by its agent (`seq`); only the
    last `SIMSCHED_LOG_LINES` lines of each simulation are kept."""

    class Stream(models.TextChoices):
        STDOUT = "stdout", "stdout"
        STDERR = "stderr", "stderr"

    simulation = models.ForeignKey(Simulation, on_delete=models.CASCADE, related_name="log_lines")
    seq = models.BigIntegerField()
    stream = models.CharField(max_length=6, choices=Stream.choices)
    line = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "simulation_log_lines"
        ordering = ["simulation", "seq"]
        constraints = [
            # Resent lines (the agent retries, or restarts) are stored once.
            models.UniqueConstraint(fields=["simulation", "seq"], name="log_line_once_per_seq"),
        ]

    def __str__(self) -> str:
        return f"{self.simulation_id}#{self.seq} {self.stream}: {self.line[:60]}"
