import django.db.models.deletion
from django.db import migrations, models

import batches.models


class Migration(migrations.Migration):
    dependencies = [("batches", "0018_move_rows_to_default_connection")]

    operations = [
        migrations.AlterField(
            model_name="batch",
            name="connection",
            field=models.ForeignKey(
                default=batches.models.default_connection_id,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="batches",
                to="batches.connection",
            ),
        ),
        migrations.AlterField(
            model_name="dailyspend",
            name="connection",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="+", to="batches.connection"
            ),
        ),
        migrations.AlterField(
            model_name="upstreamminute",
            name="connection",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="+", to="batches.connection"
            ),
        ),
    ]
