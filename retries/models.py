"""The sync loop's claims on automatic retries."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from batches.models import Batch

# "retry lines that fail with 429/5xx or expire, up to N times": the retries still allowed after this batch.
AUTO_RETRY_KEY = "batchboard_auto_retry"
MAX_AUTO_RETRIES = 5


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
