"""Points belong to (simulation, metric, step): a small per-simulation table of series, and a
series id on every point and rollup row. Existing points become each simulation's `loss`."""

import django.db.models.deletion
from django.db import migrations, models

# Plain SQL that both SQLite and PostgreSQL run: one pass per table, whatever its size.
FORWARD = [
    """
    INSERT INTO convergence_series (simulation_id, metric)
    SELECT DISTINCT simulation_id, 'loss' FROM convergence_data
    """,
    """
    INSERT INTO convergence_series (simulation_id, metric)
    SELECT DISTINCT r.simulation_id, 'loss' FROM convergence_rollup AS r
    WHERE NOT EXISTS (SELECT 1 FROM convergence_series AS s WHERE s.simulation_id = r.simulation_id)
    """,
    """
    UPDATE convergence_data SET series_id = (
        SELECT s.id FROM convergence_series AS s
        WHERE s.simulation_id = convergence_data.simulation_id AND s.metric = 'loss'
    )
    """,
    """
    UPDATE convergence_rollup SET series_id = (
        SELECT s.id FROM convergence_series AS s
        WHERE s.simulation_id = convergence_rollup.simulation_id AND s.metric = 'loss'
    )
    """,
]
# Back to one series per simulation: only `loss` survives.
BACKWARD = [
    """
    DELETE FROM convergence_data WHERE series_id NOT IN (
        SELECT id FROM convergence_series WHERE metric = 'loss'
    )
    """,
    """
    DELETE FROM convergence_rollup WHERE series_id NOT IN (
        SELECT id FROM convergence_series WHERE metric = 'loss'
    )
    """,
]


class Migration(migrations.Migration):
    dependencies = [
        ("convergence", "0001_initial"),
        ("simulations", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="ConvergenceSeries",
            fields=[
                ("id", models.AutoField(primary_key=True, serialize=False)),
                ("metric", models.CharField(max_length=100)),
                (
                    "simulation",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="series",
                        to="simulations.simulation",
                    ),
                ),
            ],
            options={
                "verbose_name_plural": "convergence series",
                "db_table": "convergence_series",
                "ordering": ["simulation", "metric"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("simulation", "metric"), name="convergence_series_metric_uniq"
                    )
                ],
            },
        ),
        migrations.AddField(
            model_name="convergencepoint",
            name="series",
            field=models.ForeignKey(
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="points",
                to="convergence.convergenceseries",
            ),
        ),
        migrations.AddField(
            model_name="convergencerollup",
            name="series",
            field=models.ForeignKey(
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="rollups",
                to="convergence.convergenceseries",
            ),
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
        migrations.AlterField(
            model_name="convergencepoint",
            name="series",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="points",
                to="convergence.convergenceseries",
            ),
        ),
        migrations.AlterField(
            model_name="convergencerollup",
            name="series",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="rollups",
                to="convergence.convergenceseries",
            ),
        ),
        migrations.RemoveConstraint(
            model_name="convergencepoint", name="convergence_point_step_uniq"
        ),
        migrations.RemoveIndex(model_name="convergencepoint", name="convergence_sim_time_idx"),
        migrations.RemoveConstraint(
            model_name="convergencerollup", name="convergence_rollup_bucket_uniq"
        ),
        migrations.AlterField(
            model_name="convergencepoint",
            name="simulation",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="points",
                to="simulations.simulation",
            ),
        ),
        migrations.AlterField(
            model_name="convergencerollup",
            name="simulation",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="rollups",
                to="simulations.simulation",
            ),
        ),
        migrations.AlterModelOptions(
            name="convergencepoint", options={"ordering": ["simulation", "series", "step"]}
        ),
        migrations.AddConstraint(
            model_name="convergencepoint",
            constraint=models.UniqueConstraint(
                fields=("simulation", "series", "step"), name="convergence_point_step_uniq"
            ),
        ),
        migrations.AddIndex(
            model_name="convergencepoint",
            index=models.Index(fields=["series", "timestamp"], name="convergence_series_time_idx"),
        ),
        migrations.AddConstraint(
            model_name="convergencerollup",
            constraint=models.UniqueConstraint(
                fields=("simulation", "series", "level", "bucket"),
                name="convergence_rollup_bucket_uniq",
            ),
        ),
    ]
