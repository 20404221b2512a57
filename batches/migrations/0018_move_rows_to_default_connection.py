"""Every batch, daily total and budget minute recorded before connections existed belongs to the connection the
single-key settings define, "default" (open to every signed-in user, as the dashboard was)."""

from django.db import migrations


def to_default_connection(apps, schema_editor):
    Connection = apps.get_model("batches", "Connection")
    default, _ = Connection.objects.get_or_create(
        slug="default", defaults={"name": "default", "source": "settings", "open_to_everyone": True}
    )
    for name in ("Batch", "DailySpend", "UpstreamMinute"):
        apps.get_model("batches", name).objects.filter(connection__isnull=True).update(connection=default)


class Migration(migrations.Migration):
    dependencies = [("batches", "0017_connections")]

    operations = [migrations.RunPython(to_default_connection, migrations.RunPython.noop)]
