from django.db import models
from django.utils import timezone

from simulations.models import Simulation

ROLLUP_FANOUT = 16
ROLLUP_LEVELS = (1, 2, 3, 4, 5, 6)  # bucket widths 16, 256, ..., 16**6 steps


def rollup_width(level: int) -> int:
    return ROLLUP_FANOUT**level


class ConvergencePoint(models.Model):
    """One loss value a simulation reported at one step."""

    simulation = models.ForeignKey(
        Simulation, on_delete=models.CASCADE, related_name="points", db_index=False
    )
    step = models.PositiveIntegerField()
    timestamp = models.DateTimeField(default=timezone.now)
    loss_value = models.FloatField()

    class Meta:
        db_table = "convergence_data"
        ordering = ["simulation", "step"]
        constraints = [
            models.UniqueConstraint(
                fields=["simulation", "step"], name="convergence_point_step_uniq"
            ),
            models.CheckConstraint(
                condition=models.Q(step__gte=0), name="convergence_step_not_negative"
            ),
        ]
        indexes = [
            models.Index(fields=["simulation", "timestamp"], name="convergence_sim_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.simulation_id}@{self.step}: {self.loss_value}"


class ConvergenceRollup(models.Model):
    """Min, max, first and last point of one step bucket, kept current at ingestion.

    Level L buckets are 16**L steps wide. A chart of any window reads a few thousand of these
    rows instead of millions of points, and still sees every spike (the bucket's min and max).
    """

    simulation = models.ForeignKey(
        Simulation, on_delete=models.CASCADE, related_name="rollups", db_index=False
    )
    level = models.PositiveSmallIntegerField()
    bucket = models.BigIntegerField()
    count = models.PositiveIntegerField()
    first_step = models.PositiveIntegerField()
    first_loss = models.FloatField()
    last_step = models.PositiveIntegerField()
    last_loss = models.FloatField()
    min_step = models.PositiveIntegerField()
    min_loss = models.FloatField()
    max_step = models.PositiveIntegerField()
    max_loss = models.FloatField()

    class Meta:
        db_table = "convergence_rollup"
        constraints = [
            models.UniqueConstraint(
                fields=["simulation", "level", "bucket"], name="convergence_rollup_bucket_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.simulation_id} L{self.level}#{self.bucket}: {self.count} points"
