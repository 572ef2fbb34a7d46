from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models


class Machine(models.Model):
    """A cloud machine simulations run on, paid for by the hour."""

    class Status(models.TextChoices):
        AVAILABLE = "available", "Available"
        BUSY = "busy", "Busy"
        MAINTENANCE = "maintenance", "Maintenance"

    name = models.CharField(max_length=100, unique=True)
    cpu = models.CharField(max_length=200, help_text="CPU model, e.g. 'AMD EPYC 9654 (96 cores)'.")
    gpu = models.CharField(
        max_length=200, blank=True, help_text="GPU model, e.g. '8x NVIDIA H100'."
    )
    memory = models.PositiveIntegerField(
        validators=[MinValueValidator(1)], help_text="Memory in GB."
    )
    cpu_cores = models.PositiveIntegerField(default=8, validators=[MinValueValidator(1)])
    gpu_count = models.PositiveIntegerField(default=0)
    hourly_cost = models.DecimalField(
        max_digits=10,
        decimal_places=2,
        default=Decimal("0.00"),
        validators=[MinValueValidator(Decimal("0"))],
        help_text="USD per hour.",
    )
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.AVAILABLE, db_index=True
    )
    agent_user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="agent_machine",
        help_text="The account whose token the agent on this machine uses.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "machines"
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(memory__gt=0), name="machine_memory_positive"
            ),
            models.CheckConstraint(
                condition=models.Q(cpu_cores__gt=0), name="machine_cpu_cores_positive"
            ),
            models.CheckConstraint(
                condition=models.Q(hourly_cost__gte=0), name="machine_hourly_cost_not_negative"
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=["available", "busy", "maintenance"]),
                name="machine_status_valid",
            ),
        ]
        indexes = [models.Index(fields=["status", "hourly_cost"], name="machine_status_cost_idx")]

    def __str__(self) -> str:
        return self.name
