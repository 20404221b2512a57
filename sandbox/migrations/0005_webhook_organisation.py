"""Each webhook goes to its batch's organisation's URL, signed with that organisation's secret."""

from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def to_the_batch_organisation(apps, schema_editor):
    SandboxBatch = apps.get_model("sandbox", "SandboxBatch")
    SandboxWebhook = apps.get_model("sandbox", "SandboxWebhook")
    organisation = SandboxBatch.objects.filter(pk=OuterRef("batch_id")).values("organisation")[:1]
    SandboxWebhook.objects.filter(batch_id__in=SandboxBatch.objects.values("pk")).update(
        organisation=Subquery(organisation)
    )


class Migration(migrations.Migration):
    dependencies = [("sandbox", "0004_organisations_long_ids")]

    operations = [
        migrations.AddField(
            model_name="sandboxwebhook",
            name="organisation",
            field=models.CharField(default="org-sandbox", max_length=32),
            preserve_default=False,
        ),
        migrations.RunPython(to_the_batch_organisation, migrations.RunPython.noop),
    ]
