"""Link the batches already stored whose metadata names the batch they retry (made elsewhere, or before this app)."""

import re

from django.db import migrations

RETRY_OF_KEY = "batchboard_retry_of"
JOB_KEY = "batchboard_job"
# batches.services.BATCH_ID_PATTERN as of this migration (a migration does not import code that may change).
BATCH_ID_PATTERN = re.compile(r"batch_[A-Za-z0-9_-]{1,120}")


def link_existing(apps, schema_editor):
    Batch = apps.get_model("batches", "Batch")
    RetryLink = apps.get_model("retries", "RetryLink")
    links = []
    for batch in Batch.objects.filter(search_text__contains=RETRY_OF_KEY).only("pk", "batch_id", "metadata"):
        parent = str(batch.metadata.get(RETRY_OF_KEY) or "").strip()
        if BATCH_ID_PATTERN.fullmatch(parent) and parent != batch.batch_id:
            job = str(batch.metadata.get(JOB_KEY) or "").strip()
            job = job if BATCH_ID_PATTERN.fullmatch(job) else parent
            links.append(RetryLink(batch_id=batch.pk, parent_batch_id=parent[:128], job_batch_id=job[:128]))
    RetryLink.objects.bulk_create(links, ignore_conflicts=True)


class Migration(migrations.Migration):
    dependencies = [("retries", "0001_retry_lineage_and_automatic_retries")]

    operations = [migrations.RunPython(link_existing, migrations.RunPython.noop)]
