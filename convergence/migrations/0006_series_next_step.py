from django.db import migrations, models

# One past the largest stored step of each series: from its points, or from its finest rollup
# buckets when `manage.py compact` dropped them. The same SQL on PostgreSQL and SQLite.
BACKFILL = """
    UPDATE convergence_series SET next_step = 1 + CAST(COALESCE(
        (SELECT max(step) FROM convergence_data AS d
         WHERE d.simulation_id = convergence_series.simulation_id
           AND d.series_id = convergence_series.id),
        (SELECT max(last_step) FROM convergence_rollup AS r
         WHERE r.simulation_id = convergence_series.simulation_id
           AND r.series_id = convergence_series.id AND r.level = 1),
        -1) AS bigint)
"""


class Migration(migrations.Migration):
    dependencies = [
        ("convergence", "0005_series_compacted_at"),
    ]

    operations = [
        migrations.AddField(
            model_name="convergenceseries",
            name="next_step",
            field=models.BigIntegerField(db_default=0, editable=False),
        ),
        migrations.RunSQL(BACKFILL, migrations.RunSQL.noop),
    ]
