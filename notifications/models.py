"""Notifications: where they go (Destination), what they are about (Subscription), and one row per event, batch and
destination (Notification) that is the exactly-once claim, with its delivery attempts (Attempt) for the log."""

from __future__ import annotations

import secrets as random_secrets
from base64 import b64encode
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Q
from django.utils import timezone

from batches import secrets, services
from batches.models import Batch, Connection

NAME_LENGTH = 100
TARGET_LENGTH = 2000
ERROR_LENGTH = 1000
EVENT_KEY_LENGTH = 40


class Kind(models.TextChoices):
    APPRISE = "apprise", "Apprise URL (Slack, Teams, Discord, json://…)"
    EMAIL = "email", "Email address"
    SIGNED_WEBHOOK = "signed_webhook", "Signed webhook (Standard Webhooks)"


def shown_target(kind: str, target: str) -> str:
    """What may be shown of a destination: the scheme and host of a URL, the domain of an address. Never the path,
    the user, the password or the query, where services keep their tokens."""
    if kind == Kind.EMAIL:
        return f"email to …@{target.rpartition('@')[2]}"
    parts = urlsplit(target)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}" if host else f"{parts.scheme}://…"


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: whsec_ and 32 random bytes in base64."""
    return "whsec_" + b64encode(random_secrets.token_bytes(32)).decode()


class DestinationQuerySet(models.QuerySet):
    def of_user(self, user):
        return self.filter(user=user)

    def of_teams(self, teams):
        return self.filter(team__in=teams)

    def managed_by(self, user):
        """The destinations `user` may change: their own, and those of the teams they administer."""
        return self.filter(Q(user=user) | Q(team__in=managed_teams(user)))


def managed_teams(user):
    """The teams whose destinations `user` manages: every team for a superuser; their own teams with the permission
    notifications.manage_team."""
    if not user.is_authenticated:
        return Group.objects.none()
    if user.is_superuser:
        return Group.objects.all()
    if user.has_perm("notifications.manage_team"):
        return Group.objects.filter(user=user)
    return Group.objects.none()


class Destination(models.Model):
    """Where notifications go: a user's own, or a team's. The URL or address is encrypted at rest (batches.secrets)
    and shown only as `shown` (scheme and host). After settings.BATCHBOARD_NOTIFY_PAUSE_AFTER failures in a row it is
    paused until someone resumes it."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    team = models.ForeignKey(Group, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=NAME_LENGTH)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    target_encrypted = models.TextField()
    shown = models.CharField(max_length=300)
    # A signed webhook's whsec_ secret, encrypted: shown once, when the destination is made.
    secret_encrypted = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    paused_at = models.DateTimeField(null=True, blank=True)
    # When the send task queued for this destination's waiting notifications runs; None while none is queued
    # (notifications.delivery): a burst of events queues one task per destination, not one per notification.
    send_due_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=ERROR_LENGTH, blank=True)
    # One message per this many minutes listing what happened (0: one message per event); when the next is due.
    digest_minutes = models.PositiveSmallIntegerField(default=0)
    digest_due_at = models.DateTimeField(null=True, blank=True)

    objects = DestinationQuerySet.as_manager()

    class Meta:
        ordering = ["name", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=Q(user__isnull=False, team__isnull=True) | Q(user__isnull=True, team__isnull=False),
                name="notifications_destination_one_owner",
            )
        ]
        permissions = [("manage_team", "Can manage the notifications of their teams")]

    def __str__(self):
        return f"{self.name} ({self.shown})"

    @property
    def owner_label(self) -> str:
        return f"team {self.team.name}" if self.team_id else "you"

    def set_target(self, target: str) -> None:
        """Encrypt and keep the URL or address; raises batches.secrets.Unreadable without an encryption key."""
        self.target_encrypted = secrets.encrypt(target)
        self.shown = shown_target(self.kind, target)

    @property
    def target(self) -> str:
        return secrets.decrypt(self.target_encrypted)

    @property
    def webhook_secret(self) -> str:
        return secrets.decrypt(self.secret_encrypted) if self.secret_encrypted else ""

    def viewable_connection_ids(self) -> set[int]:
        """The connections whose batches this destination's owner may see: what a subscription may tell them of."""
        if self.user_id:
            return set(Connection.objects.viewable_by(self.user).values_list("pk", flat=True))
        return set(Connection.objects.viewable_by_team(self.team_id).values_list("pk", flat=True))


class Scope(models.TextChoices):
    MINE = "mine", "Batches I created"
    BATCH = "batch", "One batch"
    JOB = "job", "One job (a batch and its retries)"
    FILTER = "filter", "A saved filter"
    CONNECTION = "connection", "Everything of a connection"


# The events a subscription may choose, by the field that turns it on.
EVENT_FIELDS = (
    ("on_completed", "Completed"),
    ("on_failed", "Failed"),
    ("on_expired", "Expired"),
    ("on_cancelled", "Cancelled"),
    ("on_failures", "Completed with failures above the threshold"),
    ("on_stuck", "Stuck (validating or finalizing too long)"),
    ("on_expiring", "Expiring soon"),
    ("on_budget", "Connection's monthly budget at 80 % and 100 %"),
    ("on_job_complete", "A job's final results complete (all retries done)"),
)
FINISHED_FIELDS = {
    "completed": "on_completed",
    "failed": "on_failed",
    "expired": "on_expired",
    "cancelled": "on_cancelled",
}


class Subscription(models.Model):
    """What a destination hears about: the batches of one scope, and which events of theirs."""

    destination = models.ForeignKey(Destination, on_delete=models.CASCADE, related_name="subscriptions")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    scope = models.CharField(max_length=12, choices=Scope.choices)
    # One batch; one job (its original batch's id, in `connection`); a filter's or a whole connection's connection.
    batch = models.ForeignKey(Batch, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    job = models.CharField(max_length=services.ID_LENGTH, blank=True)
    connection = models.ForeignKey(Connection, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    metadata_key = models.CharField(max_length=64, blank=True)
    metadata_value = models.CharField(max_length=512, blank=True)
    endpoint = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=128, blank=True)
    on_completed = models.BooleanField(default=True)
    on_failed = models.BooleanField(default=True)
    on_expired = models.BooleanField(default=True)
    on_cancelled = models.BooleanField(default=False)
    on_failures = models.BooleanField(default=True)
    failure_percent = models.PositiveSmallIntegerField(default=5)
    on_stuck = models.BooleanField(default=True)
    on_expiring = models.BooleanField(default=True)
    on_budget = models.BooleanField(default=False)
    on_job_complete = models.BooleanField(default=False)

    class Meta:
        ordering = ["pk"]
        indexes = [
            models.Index(fields=["scope", "connection"], name="notify_sub_scope_connection"),
            models.Index(fields=["job"], name="notify_sub_job"),
        ]

    def __str__(self):
        return f"{self.describe()} → {self.destination}"

    def describe(self) -> str:
        if self.scope == Scope.BATCH and self.batch_id:
            return f"batch {self.batch.batch_id}"
        if self.scope == Scope.JOB:
            return f"job {self.job}"
        if self.scope == Scope.CONNECTION and self.connection_id:
            return f"everything of {self.connection.name}"
        if self.scope == Scope.FILTER:
            parts = [f"connection {self.connection.name}" if self.connection_id else ""]
            parts += [f"{self.metadata_key}:{self.metadata_value}" if self.metadata_key else ""]
            parts += [f"endpoint {self.endpoint}" if self.endpoint else "", f"model {self.model}" if self.model else ""]
            return "filter " + (", ".join(part for part in parts if part) or "(every batch)")
        return "batches created by " + (self.created_by.get_username() if self.created_by_id else "a deleted user")

    @property
    def event_labels(self) -> list[str]:
        labels = []
        for name, label in EVENT_FIELDS:
            if getattr(self, name):
                labels.append(f"failures above {self.failure_percent} %" if name == "on_failures" else label.lower())
        return labels

    def matches_metadata(self, batch: Batch) -> bool:
        if not self.metadata_key:
            return True
        metadata = batch.metadata if isinstance(batch.metadata, dict) else {}
        return str(metadata.get(self.metadata_key, "")).lower() == self.metadata_value.lower()


class State(models.TextChoices):
    PENDING = "pending", "waiting"
    SENT = "sent", "sent"
    FAILED = "failed", "failed"
    SKIPPED = "skipped", "not sent"
    DIGEST = "digest", "waiting for the digest"
    HELD = "held", "held (destination paused)"


class Notification(models.Model):
    """One event of one batch (or of a connection: budgets) for one destination. The unique (event, batch,
    destination) is what makes it exactly once: whichever path records a change first inserts the row, and only an
    inserted row enqueues a send. `state`, `tries` and `busy_until` are the send task's claim, as in
    webhooks.processing."""

    destination = models.ForeignKey(Destination, on_delete=models.CASCADE, related_name="notifications")
    batch = models.ForeignKey(Batch, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    connection = models.ForeignKey(Connection, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    event = models.CharField(max_length=EVENT_KEY_LENGTH)
    created_at = models.DateTimeField(default=timezone.now)
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    tries = models.PositiveIntegerField(default=0)
    busy_until = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    # Set for "Send a test": no batch, never unique.
    is_test = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["event", "batch", "destination"],
                condition=Q(batch__isnull=False),
                name="notifications_once_per_batch_event_destination",
            ),
            models.UniqueConstraint(
                fields=["event", "connection", "destination"],
                condition=Q(batch__isnull=True, is_test=False),
                name="notifications_once_per_connection_event_destination",
            ),
        ]
        indexes = [
            models.Index(fields=["destination", "-created_at"], name="notify_destination_newest"),
            models.Index(fields=["state", "created_at"], name="notify_state_created"),
        ]

    def __str__(self):
        return f"{self.event} of {self.batch or self.connection} → {self.destination}"

    @property
    def event_label(self) -> str:
        """What happened, in words ("completed", "stuck in validating"), as the message says it."""
        from notifications.messages import what_happened

        return "test" if self.is_test else what_happened(self.event, self.batch)

    @property
    def batch_path(self) -> str:
        from notifications.messages import batch_path

        return batch_path(self.batch) if self.batch_id else ""


class Step(models.TextChoices):
    SEND = "send", "a message of its own"
    SUMMARY = "summary", "in a summary"  # a digest, or the summary sent when a paused destination is resumed
    HELD = "held", "held: the destination is paused"
    SKIPPED = "skipped", "not sent"


class Attempt(models.Model):
    """What happened to a notification, when: the delivery log. A try to send it alone or in a summary (`ok`, and
    the error), or, without a try, held while its destination was paused, or skipped (the reason in `error`)."""

    notification = models.ForeignKey(Notification, on_delete=models.CASCADE, related_name="attempts")
    at = models.DateTimeField(default=timezone.now)
    ok = models.BooleanField()
    error = models.CharField(max_length=ERROR_LENGTH, blank=True)
    step = models.CharField(max_length=8, choices=Step.choices, default=Step.SEND)

    class Meta:
        ordering = ["-at", "-pk"]

    def __str__(self):
        return f"{self.outcome} at {self.at:%Y-%m-%d %H:%M:%S}"

    @property
    def outcome(self) -> str:
        """The log's words for it: "sent", "sent in a summary", "failed: …", "held: …", "not sent: …"."""
        if self.step == Step.HELD:
            return Step.HELD.label
        if self.step == Step.SKIPPED:
            return f"not sent: {self.error}"
        if not self.ok:
            return f"failed: {self.error}"
        return "sent in a summary" if self.step == Step.SUMMARY else "sent"
