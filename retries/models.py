"""What automatic retries did, one row per parent batch."""

from __future__ import annotations

from django.db import models

from batches import services
from batches.models import Batch

# "retry lines that fail with 429/5xx or expire, up to N times": the retries still allowed after this batch.
AUTO_RETRY_KEY = "batchboard_auto_retry"
MAX_AUTO_RETRIES = 5


class AutoRetryState(models.TextChoices):
    SUBMITTED = "submitted", "submitted"
    FOUND = "found", "retried already"
    NOTHING = "nothing", "nothing to retry"
    FAILED = "failed", "could not be submitted"


class AutoRetry(models.Model):
    """What the automatic retry of one final batch did, for its detail page. The reaction "auto_retry" (a
    batches.models.Reaction row) is what makes it happen once; this row only tells the outcome."""

    parent = models.OneToOneField(Batch, on_delete=models.CASCADE, related_name="auto_retry")
    state = models.CharField(max_length=10, choices=AutoRetryState.choices)
    noted_at = models.DateTimeField(auto_now=True)
    lines = models.PositiveIntegerField(default=0)
    retry_batch_id = models.CharField(max_length=services.ID_LENGTH, blank=True)
    problem = models.TextField(blank=True)

    def __str__(self):
        return f"automatic retry of {self.parent.batch_id} ({self.state})"
