"""Secrets kept in the database (keys and webhook secrets of connections made in the admin), encrypted at rest.

Fernet (the `cryptography` package) with the keys of BATCHBOARD_ENCRYPTION_KEY: one or more comma-separated Fernet
keys, the first encrypting, all decrypting (MultiFernet), so a key is rotated by putting a new one first and running
`manage.py rotate_encryption_key`, which re-encrypts every stored secret with it.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class Unreadable(Exception):
    """No encryption key is set, or none of the keys decrypts the value."""


def _fernet() -> MultiFernet:
    keys = [key.strip() for key in settings.BATCHBOARD_ENCRYPTION_KEY.split(",") if key.strip()]
    if not keys:
        raise Unreadable("BATCHBOARD_ENCRYPTION_KEY is not set, so no secret can be stored or read.")
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except ValueError:
        raise Unreadable(
            "BATCHBOARD_ENCRYPTION_KEY must be Fernet keys (32 url-safe base64-encoded bytes each, comma-separated); "
            'make one with: python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
        ) from None


def can_encrypt() -> bool:
    try:
        _fernet()
    except Unreadable:
        return False
    return True


def encrypt(value: str) -> str:
    return _fernet().encrypt(value.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise Unreadable("none of the keys in BATCHBOARD_ENCRYPTION_KEY decrypts it (was the key changed?)") from None


def rotate(token: str) -> str:
    """The value encrypted again with the first key (MultiFernet.rotate)."""
    try:
        return _fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise Unreadable("none of the keys in BATCHBOARD_ENCRYPTION_KEY decrypts it (was the key changed?)") from None
