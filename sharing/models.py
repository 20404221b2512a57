"""Share links: a random token, kept only as its SHA-256, that opens one batch read-only until it expires or is
revoked."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from batches import access
from batches.models import USERNAME_LENGTH, Batch, stored_username

NAME_MAX_CHARS = 80
# secrets.token_urlsafe(32): 32 random bytes, 43 URL-safe characters. Anything else in an address is no token, and
# is refused before a query.
TOKEN_BYTES = 32
TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
# How long a link may work: a choice on the form, from an hour to 30 days.
SHORTEST = timedelta(hours=1)
LONGEST = timedelta(days=30)
# Bounds on what one batch, and one user across batches, may have working at once.
MAX_ACTIVE_PER_BATCH = 50
MAX_ACTIVE_PER_USER = 200


class TooManyLinks(Exception):
    """Making one more link would pass MAX_ACTIVE_PER_BATCH or MAX_ACTIVE_PER_USER."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ShareLinkQuerySet(models.QuerySet):
    def active(self, now=None):
        return self.filter(revoked_at__isnull=True, expires_at__gt=now or timezone.now())

    def for_batch(self, batch):
        return self.filter(batch=batch).order_by("expires_at", "pk")

    def by_token(self, token: str) -> ShareLink | None:
        """The link of `token`, working or not; None for anything that is not one of our tokens."""
        if not TOKEN.fullmatch(token):
            return None
        return self.select_related("batch").filter(token_hash=token_hash(token)).first()


class ShareLink(models.Model):
    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="share_links")
    token_hash = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=NAME_MAX_CHARS, blank=True)
    allow_results = models.BooleanField(default=False)
    allow_exports = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Kept as text too: the name survives the user's deletion.
    created_by_name = models.CharField(max_length=USERNAME_LENGTH, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by_name = models.CharField(max_length=USERNAME_LENGTH, blank=True)

    objects = ShareLinkQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["batch", "expires_at"]), models.Index(fields=["created_by", "expires_at"])]

    def __str__(self):
        return self.label

    @property
    def label(self) -> str:
        """How the audit log and the page name the link: its name, else the start of its hash (never the token)."""
        return self.name or self.token_hash[:8]

    @property
    def audit_name(self) -> str:
        return f"share link {self.label}"

    def works(self, now=None) -> bool:
        return self.revoked_at is None and self.expires_at > (now or timezone.now())

    def may_be_revoked_by(self, user) -> bool:
        """Its maker, or whoever may cancel batches on its batch's connection (a superuser may do anything)."""
        if self.created_by_id is not None and self.created_by_id == user.pk:
            return True
        return access.may(user, access.CANCEL, self.batch.connection_id)

    def revoke(self, user) -> bool:
        """End the link now; False when it had ended already (revoked or expired)."""
        now = timezone.now()
        ended = (
            ShareLink.objects.active(now)
            .filter(pk=self.pk)
            .update(revoked_at=now, revoked_by_name=stored_username(user.get_username()))
        )
        return bool(ended)

    @classmethod
    def make(
        cls, batch: Batch, user, *, lifetime: timedelta, name: str = "", allow_results: bool, allow_exports: bool
    ) -> tuple[ShareLink, str]:
        """A new link and its token (which is stored nowhere: shown once to its maker).

        Raises TooManyLinks past the bounds; the batch's row is locked meanwhile, so two makers at once cannot both
        take the last place.
        """
        if not SHORTEST <= lifetime <= LONGEST:
            raise ValueError(f"A share link works for {SHORTEST} to {LONGEST}, not {lifetime}.")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = timezone.now()
        with transaction.atomic():
            Batch.objects.select_for_update().filter(pk=batch.pk).first()
            if cls.objects.active(now).filter(batch=batch).count() >= MAX_ACTIVE_PER_BATCH:
                raise TooManyLinks(
                    f"This batch has {MAX_ACTIVE_PER_BATCH} working share links, the most it may have: revoke one "
                    "first."
                )
            if cls.objects.active(now).filter(created_by=user).count() >= MAX_ACTIVE_PER_USER:
                raise TooManyLinks(
                    f"You have {MAX_ACTIVE_PER_USER} working share links, the most one user may have: revoke some "
                    "first."
                )
            link = cls.objects.create(
                batch=batch,
                token_hash=token_hash(token),
                name=name[:NAME_MAX_CHARS],
                allow_results=allow_results,
                allow_exports=allow_exports and allow_results,
                created_at=now,
                expires_at=now + lifetime,
                created_by=user,
                created_by_name=stored_username(user.get_username()),
            )
        return link, token
