from django.db import models
from django.utils import timezone

from simulations.models import Simulation

ROLLUP_FANOUT = 16
ROLLUP_LEVELS = (1, 2, 3, 4, 5, 6)  # bucket widths 16, 256, ..., 16**6 steps


def rollup_width(level: int) -> int:
    return ROLLUP_FANOUT**level


METRIC_MAX_LENGTH = 100
METRIC_PATTERN = r"^[A-Za-z0-9_./-]{1,100}\Z"  # anchored: validators search
DEFAULT_METRIC = "loss"
MAX_STEP = 2**31 - 1  # the points' step column is a 4-byte integer


class ConvergenceSeries(models.Model):
    """One named metric of a simulation (`loss`, `val/loss`, `lr`): the name is stored once here,
    and every point and rollup row carries the series' small integer id."""

    id = models.AutoField(primary_key=True)  # 4 bytes: fits the padding of a point row
    simulation = models.ForeignKey(
        Simulation, on_delete=models.CASCADE, related_name="series", db_index=False
    )
    metric = models.CharField(max_length=METRIC_MAX_LENGTH)
    # Set by `manage.py compact` once the raw points are dropped: charts read rollups only.
    compacted_at = models.DateTimeField(null=True, blank=True)
    # One past the largest step stored, kept by every write (convergence/stores.py): a point
    # sent without a step takes it with one row update, not a max() over the points under a
    # lock. Past MAX_STEP the series has no step left.
    next_step = models.BigIntegerField(db_default=0, editable=False)

    class Meta:
        db_table = "convergence_series"
        ordering = ["simulation", "metric"]
        constraints = [
            models.UniqueConstraint(
                fields=["simulation", "metric"], name="convergence_series_metric_uniq"
            ),
        ]
        verbose_name_plural = "convergence series"

    def __str__(self) -> str:
        return f"{self.simulation_id}/{self.metric}"


class ConvergencePoint(models.Model):
    """One value a simulation reported for one metric at one step.

    `simulation` repeats the series' simulation (always copied from the series row by the
    services): it costs no space (it shares the 8-byte alignment the step column padded
    anyway), leads the unique key so that a table partitioned by simulation keeps it, and lets
    per-simulation reads and deletes skip the series table. Its integrity comes from the series
    foreign key, so it has no constraint of its own (one foreign-key check per row, not two).
    """

    simulation = models.ForeignKey(
        Simulation,
        on_delete=models.CASCADE,
        related_name="points",
        db_index=False,
        db_constraint=False,
    )
    series = models.ForeignKey(
        ConvergenceSeries, on_delete=models.CASCADE, related_name="points", db_index=False
    )
    step = models.PositiveIntegerField()
    timestamp = models.DateTimeField(default=timezone.now)
    loss_value = models.FloatField()

    class Meta:
        db_table = "convergence_data"
        ordering = ["simulation", "series", "step"]
        constraints = [
            models.UniqueConstraint(
                fields=["simulation", "series", "step"], name="convergence_point_step_uniq"
            ),
            models.CheckConstraint(
                condition=models.Q(step__gte=0), name="convergence_step_not_negative"
            ),
        ]
        indexes = [
            models.Index(fields=["series", "timestamp"], name="convergence_series_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.simulation_id}/{self.series_id}@{self.step}: {self.loss_value}"


class ConvergenceRollup(models.Model):
    """Min, max, first and last point of one step bucket of a series, kept current at ingestion.

    Level L buckets are 16**L steps wide. A chart of any window reads a few thousand of these
    rows instead of millions of points, and still sees every spike (the bucket's min and max).
    """

    simulation = models.ForeignKey(  # repeats the series' simulation, as on points
        Simulation,
        on_delete=models.CASCADE,
        related_name="rollups",
        db_index=False,
        db_constraint=False,
    )
    series = models.ForeignKey(
        ConvergenceSeries, on_delete=models.CASCADE, related_name="rollups", db_index=False
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
    # When the bucket's first and last points were taken, for charts by wall-clock time (and
    # after `compact` has dropped the raw points). Null on rows written before they existed.
    first_time = models.DateTimeField(null=True)
    last_time = models.DateTimeField(null=True)

    class Meta:
        db_table = "convergence_rollup"
        constraints = [
            models.UniqueConstraint(
                fields=["simulation", "series", "level", "bucket"],
                name="convergence_rollup_bucket_uniq",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.simulation_id}/{self.series_id} L{self.level}#{self.bucket}: {self.count}"
