"""Seed the sandbox's two demo organisations now (normally each is seeded on its first use), optionally starting from
scratch."""

import time
from collections import Counter

from django.core.management.base import BaseCommand, CommandError

from sandbox import clock, organisations, seed
from sandbox.models import SandboxBatch
from sandbox.simulation import state_at


class Command(BaseCommand):
    help = (
        "Create the demo batches of the sandbox's two organisations (keys sk-sandbox and sk-sandbox-second) if they "
        "were never created; --reset deletes every sandbox batch first. With --batches N: add N batches to the first "
        "organisation, created over the last --days days, instead (bulk-inserted, seconds for 100,000), the newest "
        "--running of them still running, for trying batchboard at scale."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--reset", action="store_true", help="Delete all sandbox batches and files, then seed again."
        )
        parser.add_argument("--batches", type=int, help="Add this many batches for a large organisation.")
        parser.add_argument("--running", type=int, default=0, help="Of them, still running (default: 0).")
        parser.add_argument("--days", type=float, default=30.0, help="Created over this many days (default: 30).")

    def handle(self, *args, reset, batches, running, days, **options):
        if reset:
            seed.reset()
            self.stdout.write("Deleted every sandbox batch and file.")
        if batches is not None:
            if batches < 1 or not 0 <= running <= batches or not 0 < days <= 365:
                raise CommandError("--batches must be at least 1, --running between 0 and --batches, --days 0-365.")
            started = time.monotonic()
            counts = seed.seed_scale(batches, running, clock.now(), days=days)
            summary = ", ".join(f"{count:,} {kind}" for kind, count in counts.items())
            self.stdout.write(
                self.style.SUCCESS(f"Added {batches:,} batches ({summary}) in {time.monotonic() - started:.1f} s.")
            )
            return
        for organisation in (organisations.FIRST, organisations.SECOND):
            if not seed.ensure_seeded(organisation):
                self.stdout.write(f"The sandbox's {organisation} was already seeded; use --reset to start again.")
                continue
            now = clock.now()
            statuses = Counter(
                state_at(batch.plan, now).status for batch in SandboxBatch.objects.filter(organisation=organisation)
            )
            summary = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
            self.stdout.write(
                self.style.SUCCESS(f"Seeded {sum(statuses.values())} demo batches for {organisation}: {summary}.")
            )
