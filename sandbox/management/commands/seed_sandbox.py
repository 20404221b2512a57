"""Seed the sandbox's demo organisation now (normally done on first use), optionally starting from scratch."""

import time
from collections import Counter

from django.core.management.base import BaseCommand

from sandbox import seed
from sandbox.models import SandboxBatch
from sandbox.simulation import state_at


class Command(BaseCommand):
    help = "Create the sandbox's demo batches if they were never created; --reset deletes every sandbox batch first."

    def add_arguments(self, parser):
        parser.add_argument(
            "--reset", action="store_true", help="Delete all sandbox batches and files, then seed again."
        )

    def handle(self, *args, reset, **options):
        if reset:
            seed.reset()
            self.stdout.write("Deleted every sandbox batch and file.")
        if not seed.ensure_seeded():
            self.stdout.write("The sandbox was already seeded; use --reset to start again.")
            return
        now = time.time()
        statuses = Counter(state_at(batch.plan, now).status for batch in SandboxBatch.objects.all())
        summary = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
        self.stdout.write(self.style.SUCCESS(f"Seeded {sum(statuses.values())} demo batches: {summary}."))
