"""Fetch and index the results of final batches now, as the sync loop does after each pass (e.g. from cron)."""

from django.core.management.base import BaseCommand, CommandError

from results.archive import archive_due, check_upstream


class Command(BaseCommand):
    help = (
        "Keep the results of final batches locally: with BATCHBOARD_ARCHIVE=final, ask for every final batch not "
        "kept yet; then fetch and index up to --limit of the archives that are due (those a viewer is waiting for "
        "first), and check whether the API still has the files of a few kept ones. The sync loop does the same "
        "after each pass, two archives at a time."
    )

    def add_arguments(self, parser):
        parser.add_argument("--limit", type=int, default=10, help="Archives to fetch at most (default: 10).")

    def handle(self, *args, limit, **options):
        if not 1 <= limit <= 10_000:
            raise CommandError(f"--limit must be between 1 and 10000; got {limit}.")
        fetched = archive_due(limit=limit)
        checked = check_upstream()
        self.stdout.write(f"Fetched the results of {fetched} batch{'' if fetched == 1 else 'es'}; checked {checked}.")
