"""Who signed in through single sign-on: the provider's stable subject for each user, and which groups (teams) take
their members from the provider's groups claim."""

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models


class OidcIdentity(models.Model):
    """A user's account at the provider (issuer and subject, which never change), matched at each sign-in instead
    of the e-mail address, which can change hands. Made at a subject's first sign-in with a new user; an
    administrator may instead link an existing user to a subject here, before its first sign-in."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="oidc_identities")
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    last_sign_in_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "single sign-on identity"
        verbose_name_plural = "single sign-on identities"
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"], name="accounts_identity_unique_subject")]

    def __str__(self):
        return f"{self.subject} at {self.issuer}"


class ManagedGroup(models.Model):
    """Marks a group whose membership the provider decides: at each sign-in, a user's membership of the managed
    groups is made equal to the groups claim. A group becomes managed when a claim first names it; groups made
    in the admin that no claim names keep the members given there. Deleting this row hands the group back to the
    admin (until a claim names it again)."""

    group = models.OneToOneField(Group, on_delete=models.CASCADE, primary_key=True, related_name="sso_managed")
    since = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "group managed by single sign-on"
        verbose_name_plural = "groups managed by single sign-on"

    def __str__(self):
        return self.group.name
