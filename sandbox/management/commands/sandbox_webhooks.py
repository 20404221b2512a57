"""Send the sandbox's webhooks: every half second, the events of batches that turned final (sandbox/webhooks.py)."""

import contextlib
import threading

from django.core.management.base import BaseCommand, CommandError

from sandbox import webhooks


class Command(BaseCommand):
    help = (
        "Send the sandbox's webhooks (batch.completed, .failed, .cancelled, .expired) until stopped: the first "
        "organisation's to SANDBOX_WEBHOOK_URL, signed with SANDBOX_WEBHOOK_SECRET, the second's to "
        "SANDBOX_SECOND_WEBHOOK_URL with SANDBOX_SECOND_WEBHOOK_SECRET. `manage.py serve` runs this in a thread by "
        "itself."
    )

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Send what is due once, then exit.")

    def handle(self, *args, once, **options):
        if not webhooks.enabled():
            raise CommandError(
                "Set SANDBOX_WEBHOOK_URL and SANDBOX_WEBHOOK_SECRET (the first organisation's), or "
                "SANDBOX_SECOND_WEBHOOK_URL and SANDBOX_SECOND_WEBHOOK_SECRET (the second's), to send the sandbox's "
                "webhooks."
            )
        if once:
            sent = webhooks.dispatch()
            self.stdout.write(f"{sent} webhook deliver{'y' if sent == 1 else 'ies'} sent.")
            return
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stops it
            webhooks.run(threading.Event())
