"""Fill the lineage columns of the batches already stored from their metadata, as the recording function now does
for every new one (the retries app's RetryLink rows held the same claims, minus those its signal missed), and ask
for each claim to be checked: a "verify_lineage" reaction, pending since long ago, which reactions.sweep() enqueues
(a migration does not enqueue tasks)."""

import datetime

import re

from django.db import migrations

RETRY_OF_KEY = "batchboard_retry_of"
JOB_KEY = "batchboard_job"
ATTEMPT_KEY = "batchboard_attempt"
# batches.services.BATCH_ID_PATTERN and lineage_keys.claim_of as of this migration (a migration does not import
# code that may change).
BATCH_ID_PATTERN = re.compile(r"batch_[A-Za-z0-9_-]{1,120}")
CHUNK = 1000
LONG_AGO = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)


def _claim(batch_id, metadata):
    parent = str(metadata.get(RETRY_OF_KEY) or "").strip()
    if not BATCH_ID_PATTERN.fullmatch(parent) or parent == batch_id:
        return None
    job = str(metadata.get(JOB_KEY) or "").strip()
    if not BATCH_ID_PATTERN.fullmatch(job) or job == batch_id:
        job = parent
    raw = str(metadata.get(ATTEMPT_KEY) or "").strip()
    attempt = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 4 else 0
    return parent, job, attempt if 1 <= attempt <= 1000 else 1


def fill_lineage(apps, schema_editor):
    Batch = apps.get_model("batches", "Batch")
    Reaction = apps.get_model("batches", "Reaction")
    candidates = Batch.objects.filter(search_text__contains=RETRY_OF_KEY).only("pk", "batch_id", "metadata")
    changed = []
    for batch in candidates.iterator(chunk_size=CHUNK):
        claim = _claim(batch.batch_id, batch.metadata)
        if claim is None:
            continue
        batch.retry_of, batch.job, batch.attempt = claim
        batch.lineage_state = "unverified"
        changed.append(batch)
        if len(changed) >= CHUNK:
            _save(Batch, Reaction, changed)
            changed = []
    _save(Batch, Reaction, changed)


def _save(Batch, Reaction, changed):  # noqa: N803 (historical models)
    Batch.objects.bulk_update(changed, ["retry_of", "job", "attempt", "lineage_state"])
    checks = [
        Reaction(batch_id=batch.pk, step="verify_lineage", run_after=LONG_AGO, enqueued_at=LONG_AGO, created_at=LONG_AGO)
        for batch in changed
    ]
    Reaction.objects.bulk_create(checks, ignore_conflicts=True)


class Migration(migrations.Migration):
    dependencies = [("batches", "0015_batch_lineage")]

    operations = [migrations.RunPython(fill_lineage, migrations.RunPython.noop)]
