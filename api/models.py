"""Personal access tokens for the JSON API: stored hashed, with scopes, an expiry, a last use and a revocation."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

READ, CANCEL, CREATE = "read", "cancel", "create"
SCOPES = (READ, CANCEL, CREATE)
SECRET_PREFIX = "bb_"  # noqa: S105 (what every token starts with, not a secret)
# What the tokens page shows of a token to tell it apart: "bb_" and the first characters of its random part.
DISPLAY_PREFIX_LENGTH = 11
MAX_LIFETIME = timedelta(days=365)
# last_used_at is written at most this often, so a busy script does not write a row on every call.
LAST_USED_WRITE_SECONDS = 60


def hashed(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def live(self, now=None):
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True, expires_at__gt=now, user__is_active=True)

    def by_secret(self, secret: str, now=None) -> ApiToken | None:
        """The live token of this secret, with its user; None for any other string (looked up by its hash alone)."""
        if not secret.startswith(SECRET_PREFIX) or len(secret) > 100:
            return None
        return self.live(now).select_related("user").filter(token_hash=hashed(secret)).first()

    def note_used(self, token: ApiToken, now=None) -> None:
        """Record a use, writing at most once a LAST_USED_WRITE_SECONDS (a conditional UPDATE, safe in parallel)."""
        now = now or timezone.now()
        stale = Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - timedelta(seconds=LAST_USED_WRITE_SECONDS))
        self.filter(stale, pk=token.pk).update(last_used_at=now)


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=60)
    # A comma-separated subset of SCOPES, in that order.
    scopes = models.CharField(max_length=30)
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=DISPLAY_PREFIX_LENGTH)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name = "API token"

    def __str__(self):
        return f"{self.name} ({self.prefix}…) of {self.user}"

    @classmethod
    def make(cls, user, *, name: str, scopes, expires_at) -> tuple[ApiToken, str]:
        """A new token and its secret, which is stored only as its hash: the caller shows it once."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        chosen = ",".join(scope for scope in SCOPES if scope in set(scopes))
        token = cls.objects.create(
            user=user,
            name=name,
            scopes=chosen,
            token_hash=hashed(secret),
            prefix=secret[:DISPLAY_PREFIX_LENGTH],
            expires_at=expires_at,
        )
        return token, secret

    @property
    def scope_list(self) -> list[str]:
        return [scope for scope in self.scopes.split(",") if scope]

    def allows(self, scope: str) -> bool:
        return scope in self.scope_list

    @property
    def is_live(self) -> bool:
        return self.revoked_at is None and self.expires_at > timezone.now()

    @property
    def audit_name(self) -> str:
        """Who the audit log says acted: the user, and the token they acted with."""
        return f"{self.user.get_username()} (token: {self.name})"
