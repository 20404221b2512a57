"""Signing a provider's user in: who they are here (matched by subject, made on first sign-in), whether they may
come in, and their groups (teams) from the groups claim."""

from __future__ import annotations

import logging
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.claims import USERNAME_MAX, Identity
from accounts.models import ManagedGroup, OidcIdentity

logger = logging.getLogger(__name__)
User = get_user_model()


class SignInRefused(Exception):
    """The provider vouched for this person, but batchboard does not let them in; the message is for them."""


def sign_in(identity: Identity):
    """The user for this identity, made on its first sign-in and brought up to date from its claims (e-mail, names,
    managed groups). Refused, with nothing written, when BATCHBOARD_OIDC_REQUIRED_GROUPS is set and the claim names
    none of them, or when the user is switched off here (not active)."""
    required = settings.BATCHBOARD_OIDC_REQUIRED_GROUPS
    if required and not set(required) & set(identity.groups):
        logger.info("sign-in refused: subject %s is in none of the required groups", identity.subject)
        raise SignInRefused("Your account is not in a group that may use batchboard. Ask an administrator to add you.")
    with transaction.atomic():
        link = _link(identity)
        user = link.user
        if not user.is_active:
            logger.info("sign-in refused: user %s (subject %s) is not active", user.get_username(), identity.subject)
            raise SignInRefused("Your batchboard account is switched off. Ask an administrator.")
        _update_profile(user, identity)
        set_managed_groups(user, identity.groups)
        link.last_sign_in_at = timezone.now()
        link.save(update_fields=["last_sign_in_at"])
    return user


def _link(identity: Identity) -> OidcIdentity:
    """This subject's identity row, locked; a new user and row on its first sign-in (once, whatever runs at once)."""
    found = OidcIdentity.objects.select_for_update().select_related("user")
    link = found.filter(issuer=identity.issuer, subject=identity.subject).first()
    if link is not None:
        return link
    try:
        with transaction.atomic():
            user = _new_user(identity)
            return OidcIdentity.objects.create(user=user, issuer=identity.issuer, subject=identity.subject)
    except IntegrityError:
        # The same subject's other sign-in, running at the same moment, made it first.
        return found.get(issuer=identity.issuer, subject=identity.subject)


def _username_candidates(name: str):
    yield name
    for number in range(2, 10):
        yield f"{name[: USERNAME_MAX - 2]}-{number}"
    while True:
        yield f"{name[: USERNAME_MAX - 9]}-{secrets.token_hex(4)}"


def _new_user(identity: Identity):
    """A user with no password (they sign in through the provider), under the claims' user name or, when someone
    has it already (in any case: "Alice" is not a new "alice"), the first free one of name-2 ... name-9, then a
    random suffix. Never an existing account: taking one over by its name or e-mail is what matching by subject
    prevents."""
    for candidate in _username_candidates(identity.username):
        if User.objects.filter(username__iexact=candidate).exists():
            continue
        try:
            with transaction.atomic():
                return User.objects.create_user(
                    candidate, email=identity.email, first_name=identity.first_name, last_name=identity.last_name
                )
        except IntegrityError:
            continue  # taken between the check and the insert
    raise AssertionError("unreachable: the candidates never end")


def _update_profile(user, identity: Identity) -> None:
    changed = [
        field
        for field in ("email", "first_name", "last_name")
        if getattr(identity, field) and getattr(user, field) != getattr(identity, field)
    ]
    for field in changed:
        setattr(user, field, getattr(identity, field))
    if changed:
        user.save(update_fields=changed)


def set_managed_groups(user, names: tuple[str, ...]) -> None:
    """Make the user's membership of managed groups equal to `names`: the groups named are made if missing and
    become managed; the user leaves managed groups not named; groups no claim ever named are not touched. A few
    queries, whatever the number of groups (bounded by the claim's normalisation)."""
    groups = {group.name: group for group in Group.objects.filter(name__in=names)}
    for name in names:
        if name not in groups:
            # One at a time, so the audit log records each group made (bulk_create sends no signal).
            groups[name], _created = Group.objects.get_or_create(name=name)
    ManagedGroup.objects.bulk_create([ManagedGroup(group=group) for group in groups.values()], ignore_conflicts=True)
    wanted = {group.pk for group in groups.values()}
    current = set(user.groups.values_list("pk", flat=True))
    managed_current = set(user.groups.filter(sso_managed__isnull=False).values_list("pk", flat=True))
    if leaving := managed_current - wanted:
        user.groups.remove(*leaving)
    if joining := wanted - current:
        user.groups.add(*joining)
