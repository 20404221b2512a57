"""What a sign-in takes from the provider's claims, normalised where it enters: the subject, a user name, the e-mail
address and names, and the list of groups (teams). Pure functions of the claims; nothing here touches the database."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Django's own limits (auth.User.username, auth.Group.name, the name fields, EmailField).
USERNAME_MAX = 150
GROUP_NAME_MAX = 150
NAME_MAX = 150
EMAIL_MAX = 254
SUBJECT_MAX = 255
# A claim listing more groups than this is cut here: only its first groups count (fewer groups, never more rights).
GROUPS_MAX = 100

_NOT_IN_USERNAME = re.compile(r"[^\w.@+-]")


class ClaimsRefused(Exception):
    """The claims cannot make a user (no subject, say); the message is for the person signing in."""


@dataclass(frozen=True)
class Identity:
    issuer: str
    subject: str
    username: str
    email: str
    first_name: str
    last_name: str
    groups: tuple[str, ...]


def clean_text(value: object, limit: int) -> str:
    """A string claim without control characters and surrounding space, or "" when it is not a string or is longer
    than `limit` (cut, a name could become someone else's)."""
    if not isinstance(value, str):
        return ""
    text = "".join(ch for ch in value if unicodedata.category(ch)[0] != "C").strip()
    return text if len(text) <= limit else ""


def claim(claims: dict, name: str) -> object:
    """The claim `name`, or for a dotted name that is not a claim itself (Keycloak's realm_access.roles) the value at
    that path; None when absent."""
    if name in claims:
        return claims[name]
    value: object = claims
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def group_names(value: object) -> tuple[str, ...]:
    """The groups claim as distinct group names, in the claim's order: a list of strings, or one string for one
    group; anything else in it (numbers, objects, empty or over-long names) is left out; at most GROUPS_MAX."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return ()
    names: dict[str, None] = {}
    for item in value:
        name = clean_text(item, GROUP_NAME_MAX)
        if name:
            names[name] = None
            if len(names) == GROUPS_MAX:
                break
    return tuple(names)


def username_for(claims: dict) -> str:
    """The user name a new account is given: preferred_username, else the e-mail address, else "user"; only the
    characters Django allows in one. Uniqueness is the caller's business."""
    for source in (claims.get("preferred_username"), claims.get("email")):
        name = _NOT_IN_USERNAME.sub("", clean_text(source, 1000))[:USERNAME_MAX]
        if name:
            return name
    return "user"


def identity_from_claims(issuer: str, claims: dict, groups_claim: str) -> Identity:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > SUBJECT_MAX or clean_text(subject, 255) != subject:
        raise ClaimsRefused("The sign-in service did not say who you are (no usable subject).")
    email = clean_text(claims.get("email"), EMAIL_MAX)
    return Identity(
        issuer=issuer,
        subject=subject,
        username=username_for(claims),
        email=email if "@" in email else "",
        first_name=clean_text(claims.get("given_name"), NAME_MAX),
        last_name=clean_text(claims.get("family_name"), NAME_MAX),
        groups=group_names(claim(claims, groups_claim)),
    )
