from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("convergence", "0004_partition_points"),
    ]

    operations = [
        migrations.AddField(
            model_name="convergenceseries",
            name="compacted_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
