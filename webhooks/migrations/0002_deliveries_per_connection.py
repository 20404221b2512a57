"""Deliveries belong to the connection whose URL received them; those received before connections existed to the
default one. A webhook-id is then unique per connection (see webhooks.models.Delivery)."""

import django.db.models.deletion
from django.db import migrations, models

import batches.models


def to_default_connection(apps, schema_editor):
    Connection = apps.get_model("batches", "Connection")
    Delivery = apps.get_model("webhooks", "Delivery")
    if not Delivery.objects.filter(connection__isnull=True).exists():
        return
    default, _ = Connection.objects.get_or_create(
        slug="default", defaults={"name": "default", "source": "settings", "open_to_everyone": True}
    )
    Delivery.objects.filter(connection__isnull=True).update(connection=default)


class Migration(migrations.Migration):
    dependencies = [
        ("batches", "0019_connections_required"),
        ("webhooks", "0001_webhooks"),
    ]

    operations = [
        migrations.AddField(
            model_name="delivery",
            name="connection",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="webhook_deliveries",
                to="batches.connection",
            ),
        ),
        migrations.RunPython(to_default_connection, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="delivery",
            name="connection",
            field=models.ForeignKey(
                default=batches.models.default_connection_id,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="webhook_deliveries",
                to="batches.connection",
            ),
        ),
        migrations.AlterField(
            model_name="delivery",
            name="batch_id",
            field=models.CharField(blank=True, max_length=512),
        ),
        migrations.AlterField(
            model_name="delivery",
            name="webhook_id",
            field=models.CharField(max_length=200),
        ),
        migrations.AddConstraint(
            model_name="delivery",
            constraint=models.UniqueConstraint(
                fields=("connection", "webhook_id"), name="webhooks_delivery_once_per_connection"
            ),
        ),
    ]
