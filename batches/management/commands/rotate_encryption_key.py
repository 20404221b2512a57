"""Re-encrypt every secret stored in the database with the first key of BATCHBOARD_ENCRYPTION_KEY."""

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from batches import secrets
from batches.models import Connection

_SECRET_FIELDS = ("api_key_encrypted", "webhook_secret_encrypted")


class Command(BaseCommand):
    help = (
        "Re-encrypt the keys and webhook secrets of the connections made in the admin with the first key of "
        "BATCHBOARD_ENCRYPTION_KEY (MultiFernet.rotate). To rotate: put a new key first (NEW,OLD), restart, run "
        "this, then remove the old key. Running it again is harmless. A secret none of the keys decrypts is left "
        "as it is and named (by connection, never its value), and the command fails."
    )

    def handle(self, *args, **options):
        if not secrets.can_encrypt():
            try:
                secrets.encrypt("")
            except secrets.Unreadable as exc:
                raise CommandError(str(exc)) from None
        rotated = connections = 0
        unreadable = []
        pks = Connection.objects.exclude(api_key_encrypted="", webhook_secret_encrypted="").values_list("pk", flat=True)
        for pk in list(pks):
            # One row at a time, locked: an edit in the admin meanwhile is neither lost nor overwritten.
            with transaction.atomic():
                connection = Connection.objects.select_for_update().filter(pk=pk).first()
                if connection is None:
                    continue
                changed = []
                for field in _SECRET_FIELDS:
                    token = getattr(connection, field)
                    if not token:
                        continue
                    try:
                        setattr(connection, field, secrets.rotate(token))
                    except secrets.Unreadable:
                        unreadable.append(f"{connection.slug} ({field.removesuffix('_encrypted').replace('_', ' ')})")
                        continue
                    changed.append(field)
                if changed:
                    connection.save(update_fields=changed)
                    rotated += len(changed)
                    connections += 1
        self.stdout.write(f"Re-encrypted {rotated} secret(s) of {connections} connection(s) with the first key.")
        if unreadable:
            raise CommandError(
                "None of the keys in BATCHBOARD_ENCRYPTION_KEY decrypts: "
                + ", ".join(unreadable)
                + ". Put back the key they were stored with (anywhere in the list), or enter them again in the admin."
            )
