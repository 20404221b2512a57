"""Lineage of retried batches (read from their metadata) and the sync loop's claims on automatic retries."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from batches.models import Batch

# Metadata keys a retry carries, so the link survives in the API's own console and in any other dashboard.
RETRY_OF_KEY = "batchboard_retry_of"
JOB_KEY = "batchboard_job"
# "retry lines that fail with 429/5xx or expire, up to N times": the retries still allowed after this batch.
AUTO_RETRY_KEY = "batchboard_auto_retry"
MAX_AUTO_RETRIES = 5


class RetryLink(models.Model):
    """A batch that is a retry: its parent and the original batch of its job, as ids (either may not be known yet).

    Recorded from the batch's metadata whenever the batch is stored, so retries made elsewhere or first seen by the
    sync loop are linked the same way as those made here.
    """

    batch = models.OneToOneField(Batch, on_delete=models.CASCADE, related_name="retry_link")
    parent_batch_id = models.CharField(max_length=128)
    job_batch_id = models.CharField(max_length=128)

    class Meta:
        indexes = [
            models.Index(fields=["parent_batch_id"], name="retry_link_parent"),
            models.Index(fields=["job_batch_id"], name="retry_link_job"),
        ]

    def __str__(self):
        return f"{self.batch.batch_id} retries {self.parent_batch_id}"


class AutoRetryState(models.TextChoices):
    CLAIMED = "claimed", "being submitted"
    SUBMITTED = "submitted", "submitted"
    NOTHING = "nothing", "nothing to retry"
    FAILED = "failed", "could not be submitted"


class AutoRetry(models.Model):
    """The sync loop's claim on retrying one final batch automatically: one row per parent, so it happens once."""

    parent = models.OneToOneField(Batch, on_delete=models.CASCADE, related_name="auto_retry")
    state = models.CharField(max_length=10, choices=AutoRetryState.choices, default=AutoRetryState.CLAIMED)
    claimed_at = models.DateTimeField(default=timezone.now)
    lines = models.PositiveIntegerField(default=0)
    retry_batch_id = models.CharField(max_length=128, blank=True)
    problem = models.TextField(blank=True)

    def __str__(self):
        return f"automatic retry of {self.parent.batch_id} ({self.state})"
