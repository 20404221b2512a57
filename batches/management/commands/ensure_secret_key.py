"""Give a local install a stable secret key and encryption key: written once to var/secret_key and
var/encryption_key, read by the settings from then on."""

import os

from cryptography.fernet import Fernet
from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils.crypto import get_random_string


class Command(BaseCommand):
    requires_system_checks = []  # one of them warns about the very key this command is about to write
    help = (
        "Write a random secret key to var/secret_key unless it exists (or DJANGO_SECRET_KEY is set), so that sessions "
        "survive restarts of a local install, and a Fernet key to var/encryption_key unless it exists (or "
        "BATCHBOARD_ENCRYPTION_KEY is set), so that connection keys and notification URLs can be stored encrypted. "
        "`make run` runs it; in production set DJANGO_SECRET_KEY and BATCHBOARD_ENCRYPTION_KEY instead."
    )

    def handle(self, *args, **options):
        if settings.SECRET_KEY_IS_TEMPORARY:
            self._write(settings.SECRET_KEY_FILE, get_random_string(64), "secret key")
        else:
            self.stdout.write("A secret key is configured already.")
        if settings.BATCHBOARD_ENCRYPTION_KEY:
            self.stdout.write("An encryption key is configured already.")
        else:
            self._write(settings.ENCRYPTION_KEY_FILE, Fernet.generate_key().decode(), "encryption key")

    def _write(self, path, key: str, what: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Readable by its owner only, and never written over an existing key.
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            self.stdout.write(f"{path} exists already.")
            return
        with os.fdopen(descriptor, "w") as file:
            file.write(key)
        self.stdout.write(f"Wrote a new {what} to {path}.")
