"""Give a local install a stable secret key: written once to var/secret_key, read by the settings from then on."""

import os

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils.crypto import get_random_string


class Command(BaseCommand):
    requires_system_checks = []  # one of them warns about the very key this command is about to write
    help = (
        "Write a random secret key to var/secret_key unless it exists (or DJANGO_SECRET_KEY is set), so that sessions "
        "survive restarts of a local install. `make run` runs it; in production set DJANGO_SECRET_KEY instead."
    )

    def handle(self, *args, **options):
        path = settings.SECRET_KEY_FILE
        if not settings.SECRET_KEY_IS_TEMPORARY:
            self.stdout.write("A secret key is configured already.")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Readable by its owner only, and never written over an existing key.
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            self.stdout.write(f"{path} exists already.")
            return
        with os.fdopen(descriptor, "w") as file:
            file.write(get_random_string(64))
        self.stdout.write(f"Wrote a new secret key to {path}.")
