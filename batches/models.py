"""The local cache: the latest known state of each batch and every distinct state ever observed."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from django.db import IntegrityError, models, transaction
from django.utils import timezone

from batches import services

STATUS_CHOICES = [(s, s.replace("_", " ")) for s in services.STATUSES]


def _from_unix(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if value else None


def payload_digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def progress_key(batch: services.Batch) -> tuple[int, int]:
    """Orders observations of one batch: timestamps are only ever added and counts only grow."""
    timestamps_set = sum(1 for name in services.TIMESTAMP_FIELDS if getattr(batch, name))
    return (timestamps_set, batch.request_counts.processed)


def status_badge(status: str, completed: int, failed: int, total: int) -> tuple[str, str]:
    label = status.replace("_", " ")
    if status == "completed" and failed:
        if not completed:
            return "completed-all-failed", "completed · all failed"
        return "completed-with-failures", f"completed · {failed:,} failed"
    if status == "completed" and total == 0:
        return "completed-with-failures", "completed · empty"
    return status, label


class BatchQuerySet(models.QuerySet):
    def active(self):
        return self.filter(is_terminal=False)

    def finished(self):
        return self.filter(is_terminal=True)

    def newest_first(self):
        return self.order_by("-created_at", "-batch_id")


class Batch(models.Model):
    """One row per batch id: the latest observed payload and the columns the list filters and sorts on."""

    batch_id = models.CharField(max_length=128, unique=True)
    status = models.CharField(max_length=20, choices=STATUS_CHOICES)
    is_terminal = models.BooleanField(default=False)
    endpoint = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=128, blank=True)
    input_file_id = models.CharField(max_length=128, blank=True)
    output_file_id = models.CharField(max_length=128, blank=True)
    error_file_id = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    total_requests = models.PositiveIntegerField(default=0)
    completed_requests = models.PositiveIntegerField(default=0)
    failed_requests = models.PositiveIntegerField(default=0)
    metadata = models.JSONField(default=dict, blank=True)
    # Lower-cased id, file ids and metadata, so the search box is one indexed-friendly LIKE.
    search_text = models.TextField(blank=True)
    payload = models.JSONField()
    payload_hash = models.CharField(max_length=64)
    first_seen_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    last_changed_at = models.DateTimeField(default=timezone.now)
    # Set when a user asks to cancel, before the upstream call, so concurrent clicks send one cancel.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_by = models.CharField(max_length=150, blank=True)

    objects = BatchQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-batch_id"]
        indexes = [
            models.Index(fields=["-created_at", "-batch_id"], name="batch_newest"),
            models.Index(fields=["status", "-created_at"], name="batch_status_newest"),
            models.Index(fields=["endpoint", "-created_at"], name="batch_endpoint_newest"),
            models.Index(fields=["model", "-created_at"], name="batch_model_newest"),
            models.Index(fields=["is_terminal", "-created_at"], name="batch_terminal_newest"),
            models.Index(fields=["finished_at"], name="batch_finished"),
        ]
        permissions = [
            ("cancel_batch", "Can cancel batches"),
            ("create_batch", "Can create batches"),
        ]

    def __str__(self):
        return self.batch_id

    @property
    def api(self) -> services.Batch:
        """The latest payload, parsed by the service module."""
        return services.Batch.from_api(self.payload)

    @property
    def is_cancellable(self) -> bool:
        return self.status in services.CANCELLABLE_STATUSES

    @property
    def processed_requests(self) -> int:
        return self.completed_requests + self.failed_requests

    @property
    def badge(self) -> tuple[str, str]:
        """(css modifier, label) for the status badge; honest about completed batches whose requests failed."""
        return status_badge(self.status, self.completed_requests, self.failed_requests, self.total_requests)

    @property
    def description(self) -> str:
        return self.metadata.get("description") or self.metadata.get("name") or ""

    def _apply(self, batch: services.Batch, digest: str, observed_at: datetime) -> None:
        self.status = batch.status
        self.is_terminal = batch.is_terminal
        self.endpoint = batch.endpoint or ""
        self.model = batch.model or ""
        self.input_file_id = batch.input_file_id or ""
        self.output_file_id = batch.output_file_id or ""
        self.error_file_id = batch.error_file_id or ""
        self.created_at = _from_unix(batch.created_at) or observed_at
        self.expires_at = _from_unix(batch.expires_at)
        self.finished_at = _from_unix(batch.completed_at or batch.failed_at or batch.expired_at or batch.cancelled_at)
        self.total_requests = batch.request_counts.total
        self.completed_requests = batch.request_counts.completed
        self.failed_requests = batch.request_counts.failed
        self.metadata = batch.metadata
        self.search_text = " ".join([batch.id, *batch.file_ids, *batch.metadata.keys(), *batch.metadata.values()])
        self.search_text = self.search_text.lower()
        self.payload = batch.raw
        self.payload_hash = digest


class BatchSnapshot(models.Model):
    """A distinct state of a batch, as observed at `observed_at`. Consecutive equal observations add no row."""

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="snapshots")
    observed_at = models.DateTimeField(default=timezone.now)
    status = models.CharField(max_length=20, choices=STATUS_CHOICES)
    total_requests = models.PositiveIntegerField(default=0)
    completed_requests = models.PositiveIntegerField(default=0)
    failed_requests = models.PositiveIntegerField(default=0)
    payload = models.JSONField()
    payload_hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["observed_at", "id"]
        indexes = [
            models.Index(fields=["batch", "observed_at"], name="snapshot_batch_observed"),
            models.Index(fields=["observed_at"], name="snapshot_observed"),
        ]
        constraints = [
            # With the row lock in record_batch this makes a duplicate impossible even under a racing writer.
            models.UniqueConstraint(fields=["batch", "payload_hash"], name="snapshot_unique_state"),
        ]

    def __str__(self):
        return f"{self.batch.batch_id} {self.status} @ {self.observed_at:%Y-%m-%d %H:%M:%S}"

    @property
    def processed_requests(self) -> int:
        return self.completed_requests + self.failed_requests


def record_batch(batch: services.Batch, observed_at: datetime | None = None) -> Batch:
    """Store what the service module fetched: update the latest state and add a snapshot if it is new.

    Safe when several requests record the same batch at once: the write happens under a row lock (an IMMEDIATE
    transaction on SQLite), an observation older than the stored state never overwrites it, and the unique
    (batch, payload) constraint stops a duplicate snapshot.
    """
    observed_at = observed_at or timezone.now()
    digest = payload_digest(batch.raw)
    for _attempt in range(3):
        try:
            return _record(batch, digest, observed_at)
        except IntegrityError:
            continue  # Another writer created the same row between our read and write; read it again.
    return Batch.objects.get(batch_id=batch.id)


def _record(batch: services.Batch, digest: str, observed_at: datetime) -> Batch:
    with transaction.atomic():
        row = Batch.objects.select_for_update().filter(batch_id=batch.id).first()
        if row is None:
            row = Batch(batch_id=batch.id, first_seen_at=observed_at)
            row._apply(batch, digest, observed_at)
            row.last_seen_at = row.last_changed_at = observed_at
            row.save(force_insert=True)
            _add_snapshot(row, batch, digest, observed_at)
            return row
        if row.payload_hash == digest:
            Batch.objects.filter(pk=row.pk, last_seen_at__lt=observed_at).update(last_seen_at=observed_at)
            return row
        if progress_key(batch) < progress_key(row.api):
            return row  # A late answer describing an older state: the stored one is newer.
        row._apply(batch, digest, observed_at)
        row.last_seen_at = row.last_changed_at = observed_at
        row.save()
        if not BatchSnapshot.objects.filter(batch=row, payload_hash=digest).exists():
            _add_snapshot(row, batch, digest, observed_at)
        return row


def _add_snapshot(row: Batch, batch: services.Batch, digest: str, observed_at: datetime) -> None:
    BatchSnapshot.objects.create(
        batch=row,
        observed_at=observed_at,
        status=batch.status,
        total_requests=batch.request_counts.total,
        completed_requests=batch.request_counts.completed,
        failed_requests=batch.request_counts.failed,
        payload=batch.raw,
        payload_hash=digest,
    )


class SyncState(models.Model):
    """Bookkeeping for upstream refreshes, shared by every web process and the sync command.

    `claimed_at` is a lease: whoever moves it forward with a conditional UPDATE does the next refresh, so many
    viewers polling at once cost one upstream list walk per interval.
    """

    name = models.CharField(max_length=200, unique=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    succeeded_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    error_kind = models.CharField(max_length=32, blank=True)
    error_message = models.TextField(blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)

    def __str__(self):
        return self.name

    @property
    def is_failing(self) -> bool:
        return bool(self.failed_at and (not self.succeeded_at or self.failed_at > self.succeeded_at))
