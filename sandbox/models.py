"""The sandbox's stored state: uploaded and generated files, batches with their simulation plans, the seed marker, the
webhooks it sends."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import models

from sandbox.simulation import Plan

# Ids are long enough for a gateway's encoded ids (sandbox/organisations.py).
ID_LENGTH = 512


class SandboxFile(models.Model):
    """A file as the Files API knows it; its bytes live in settings.SANDBOX_FILES_DIR under its id."""

    id = models.CharField(primary_key=True, max_length=ID_LENGTH)
    organisation = models.CharField(max_length=32)  # the one that uploaded it, or whose batch wrote it
    filename = models.CharField(max_length=255)
    purpose = models.CharField(max_length=32)
    bytes = models.BigIntegerField()
    created_at = models.BigIntegerField(db_index=True)
    expires_at = models.BigIntegerField(null=True, blank=True, db_index=True)
    # Deleted files answer 404, but an unfinished batch may still need the bytes of its input.
    deleted = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organisation", "created_at", "id"], name="sandbox_file_org_page")]

    def __str__(self):
        return self.id

    @property
    def path(self) -> Path:
        return Path(settings.SANDBOX_FILES_DIR) / self.id


class SandboxBatch(models.Model):
    """A batch: what was asked, and the plan from which its state at any moment is computed (see simulation.py)."""

    id = models.CharField(primary_key=True, max_length=ID_LENGTH)
    organisation = models.CharField(max_length=32)
    endpoint = models.CharField(max_length=64)
    input_file_id = models.CharField(max_length=ID_LENGTH)
    completion_window = models.CharField(max_length=8, default="24h")
    metadata = models.JSONField(null=True, blank=True)
    output_expires_after = models.IntegerField(null=True, blank=True)
    scenario = models.CharField(max_length=20, blank=True)  # see store.create_batch

    # The plan. `created` is the precise real creation time; `created_at` its whole second, for ordering.
    created = models.FloatField()
    created_at = models.BigIntegerField(db_index=True)
    speed = models.FloatField()
    validate_s = models.FloatField()
    run_s = models.FloatField()
    finalize_s = models.FloatField()
    drain_s = models.FloatField()
    total = models.IntegerField(default=0)
    model = models.CharField(max_length=100, blank=True)
    errors = models.JSONField(default=list, blank=True)
    checkpoints = models.JSONField(default=list, blank=True)
    cancel_requested = models.FloatField(null=True, blank=True)

    # Result files, written once when the batch is first seen terminal.
    results_ready = models.BooleanField(default=False, db_index=True)
    output_file_id = models.CharField(max_length=ID_LENGTH, blank=True)
    error_file_id = models.CharField(max_length=ID_LENGTH, blank=True)
    # When the batch turns final (by its plan), until the webhook sender has noticed it (sandbox/webhooks.py): the
    # sender looks only at batches due by now. None: nothing left to send.
    webhook_due_at = models.FloatField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organisation", "created_at", "id"], name="sandbox_batch_org_page")]

    def __str__(self):
        return self.id

    @property
    def plan(self) -> Plan:
        return Plan(
            created=self.created,
            speed=self.speed,
            validate_s=self.validate_s,
            run_s=self.run_s,
            finalize_s=self.finalize_s,
            drain_s=self.drain_s,
            total=self.total,
            model=self.model or None,
            errors=tuple(self.errors),
            checkpoints=tuple(tuple(point) for point in self.checkpoints),
            cancel_requested=self.cancel_requested,
        )


class SeedMarker(models.Model):
    """One row per seeding, so the demo organisation is created once however many requests race for it."""

    name = models.CharField(max_length=32, unique=True)
    seeded_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.name


class SandboxWebhook(models.Model):
    """A webhook event for a batch that reached a final status, and its delivery to the batch's organisation's URL:
    unique per batch and event type, so an event is created once however many senders notice the batch; `webhook_id`
    stays the same across retries, as Standard Webhooks says."""

    batch_id = models.CharField(max_length=ID_LENGTH)
    organisation = models.CharField(max_length=32)  # the batch's: its URL and secret (sandbox/webhooks.py)
    type = models.CharField(max_length=32)
    webhook_id = models.CharField(max_length=64, unique=True)
    body = models.TextField()  # the event exactly as signed and sent
    attempts = models.IntegerField(default=0)
    next_attempt_at = models.FloatField(db_index=True)  # the sandbox's clock; a sender holds it a while when claiming
    delivered_at = models.FloatField(null=True, blank=True)
    gave_up = models.BooleanField(default=False)
    last_status = models.IntegerField(null=True, blank=True)  # the receiver's answer, or None when it did not answer
    sent = models.IntegerField(default=0)  # POSTs sent, duplicates included

    class Meta:
        constraints = [models.UniqueConstraint(fields=["batch_id", "type"], name="sandbox_webhook_once_per_event")]

    def __str__(self):
        return f"{self.type} {self.batch_id}"
