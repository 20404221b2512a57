"""Delete the locally kept result files and per-line index of batches kept longer than --older-than."""

from django.core.management.base import BaseCommand
from django.template.defaultfilters import filesizeformat

from batches.management.commands.prune_snapshots import cutoff_for
from results.archive import prune_archive
from results.models import ArchiveState, ResultArchive


class Command(BaseCommand):
    help = (
        "For results kept locally longer ago than --older-than (e.g. 90d), delete the stored files and the "
        "per-line index. The summary stays: the counts per outcome and per error group on the detail and results "
        "pages. --dry-run lists what would be deleted and deletes nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("--older-than", required=True, help="Age of the kept results: 90d, 12h or 30m.")
        parser.add_argument("--dry-run", action="store_true", help="Only say what would be deleted.")

    def handle(self, *args, older_than, dry_run, **options):
        cutoff = cutoff_for(older_than)
        archives = ResultArchive.objects.filter(state=ArchiveState.READY, archived_at__lt=cutoff).select_related(
            "batch"
        )
        count = stored = 0
        for archive in archives.order_by("archived_at").iterator(chunk_size=200):
            count += 1
            stored += archive.stored_bytes
            if dry_run:
                self.stdout.write(
                    f"would prune {archive.batch.batch_id}: {archive.summary.get('rows', 0):,} lines, "
                    f"{filesizeformat(archive.stored_bytes)}, kept since {archive.archived_at:%Y-%m-%d}"
                )
            else:
                prune_archive(archive)
        verb = "Would prune" if dry_run else "Pruned"
        self.stdout.write(
            f"{verb} the results of {count:,} batch{'' if count == 1 else 'es'} kept since before "
            f"{cutoff:%Y-%m-%d %H:%M} UTC ({filesizeformat(stored)}); their summaries stay."
        )
