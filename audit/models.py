"""One row per audited action: who, when, from which IP, what, and the outcome."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from batches import services
from batches.models import USERNAME_LENGTH, Connection


class Action(models.TextChoices):
    LOGIN = "login", "Logged in"
    LOGOUT = "logout", "Logged out"
    LOGIN_FAILED = "login_failed", "Failed login"
    LOCKOUT = "lockout", "Locked out"
    CREATE = "create", "Created"
    CANCEL = "cancel", "Cancelled"
    DOWNLOAD = "download", "Downloaded"
    PASSWORD_CHANGE = "password_change", "Changed a password"
    USER_ADD = "user_add", "Added a user"
    USER_CHANGE = "user_change", "Changed a user"
    USER_DELETE = "user_delete", "Deleted a user"
    GROUP_ADD = "group_add", "Added a group"
    GROUP_CHANGE = "group_change", "Changed a group"
    GROUP_DELETE = "group_delete", "Deleted a group"
    MEMBERSHIP = "membership", "Changed group membership"
    PERMISSIONS = "permissions", "Changed permissions"
    SHARE_CREATE = "share_create", "Share link made"
    SHARE_REVOKE = "share_revoke", "Share link revoked"
    SHARE_OPEN = "share_open", "Opened"
    CONNECTION_ADD = "connection_add", "Added a connection"
    CONNECTION_CHANGE = "connection_change", "Changed a connection"
    CONNECTION_DELETE = "connection_delete", "Deleted a connection"


class Outcome(models.TextChoices):
    OK = "ok", "done"
    ALREADY = "already", "already done"
    REFUSED = "refused", "refused"
    ERROR = "error", "failed"


class AuditEventQuerySet(models.QuerySet):
    def for_batch(self, batch_id: str, connection_id: int):
        """The events of one batch: its id in its connection (the same id may name a batch in another)."""
        return self.filter(batch_id=batch_id, connection_id=connection_id).order_by("-at", "-pk")

    def visible_to(self, user):
        """The events `user` may read: those of the connections they may view, and those of no connection (logins,
        account changes); every one for a superuser."""
        if user.is_superuser:
            return self
        viewable = Connection.objects.viewable_by(user).values("pk")
        return self.filter(models.Q(connection__isnull=True) | models.Q(connection__in=viewable))

    def since(self, moment):
        return self.filter(at__gte=moment).order_by("at", "pk")


class AuditEvent(models.Model):
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    # The name is kept as typed (a failed login may name nobody), and survives the user's deletion.
    username = models.CharField(max_length=USERNAME_LENGTH, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    ip = models.GenericIPAddressField(null=True, blank=True, verbose_name="IP")
    action = models.CharField(max_length=20, choices=Action.choices)
    batch_id = models.CharField(max_length=services.ID_LENGTH, blank=True, db_index=True)
    # The batch's connection, for events about a batch; null for logins and account changes. (A connection with
    # batches cannot be deleted: SET_NULL only ever applies to one that never had any.)
    connection = models.ForeignKey(Connection, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    target = models.CharField(
        max_length=200, blank=True, help_text="A file, a file kind or a file name; for account changes, the account."
    )
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    detail = models.TextField(blank=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [
            models.Index(fields=["batch_id", "-at"], name="audit_batch_at"),
            models.Index(fields=["connection", "-at"], name="audit_connection_at"),
            # The failed logins from one address in the last hour (audit.login_limit).
            models.Index(fields=["ip", "action", "at"], name="audit_ip_action_at"),
        ]

    def __str__(self):
        who = self.username or "someone"
        what = " ".join(part for part in (self.get_action_display().lower(), self.batch_id, self.target) if part)
        return f"{who} {what} ({self.get_outcome_display()}) at {self.at:%Y-%m-%d %H:%M:%S}"

    @property
    def sentence(self) -> str:
        """What happened, for a person: "Cancelled by alice", "Download of the output file by bob failed"."""
        who = self.username or "someone"
        thing = f"{self.target} file" if self.action == Action.DOWNLOAD and self.target else ""
        if self.outcome == Outcome.OK:
            done = self.get_action_display()
            return f"{thing.capitalize()} downloaded by {who}" if thing else f"{done} by {who}"
        noun = {Action.CANCEL: "Cancel", Action.CREATE: "Create", Action.DOWNLOAD: "Download"}.get(self.action, "")
        noun = f"{noun} of the {thing}" if thing else noun or self.get_action_display()
        if self.outcome == Outcome.ALREADY:
            return f"{noun} by {who}: already done"
        return f"{noun} by {who} {self.get_outcome_display()}"
