"""Thin out the snapshots of long-finished batches: keep the first, the last and every status change."""

import re
from datetime import datetime, timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from batches.models import Batch, BatchSnapshot

DURATION = re.compile(r"^\s*(\d+)\s*([dhm])\s*$")
UNITS = {"d": "days", "h": "hours", "m": "minutes"}
# Batches handled per transaction, and snapshot ids per DELETE (well under SQLite's bound-parameter limit).
BATCHES_PER_CHUNK = 200
DELETE_CHUNK = 500


def parse_duration(text: str) -> timedelta:
    """ "30d", "12h" or "90m" as a timedelta; anything else is a CommandError that says what is accepted."""
    match = DURATION.match(text or "")
    if not match:
        raise CommandError(f"--older-than must be a number followed by d, h or m, like 30d, 12h or 90m (got {text!r}).")
    amount, unit = int(match[1]), match[2]
    if amount <= 0:
        raise CommandError(f"--older-than must be more than zero (got {text!r}).")
    try:
        return timedelta(**{UNITS[unit]: amount})
    except OverflowError:
        raise CommandError(f"--older-than is too large (got {text!r}).") from None


def cutoff_for(text: str) -> datetime:
    """The finish time before which batches are pruned."""
    try:
        return timezone.now() - parse_duration(text)
    except OverflowError:
        raise CommandError(f"--older-than is too large (got {text!r}).") from None


def snapshots_to_delete(rows) -> list[int]:
    """Ids of snapshots that add nothing to the history: `rows` are one batch's (id, status) in time order."""
    doomed = []
    previous_status = None
    for index, (snapshot_id, status) in enumerate(rows):
        is_first_or_last = index == 0 or index == len(rows) - 1
        if not is_first_or_last and status == previous_status:
            doomed.append(snapshot_id)
        previous_status = status
    return doomed


class Command(BaseCommand):
    help = (
        "For finished batches that finished longer ago than --older-than, keep the first and last snapshot and "
        "every snapshot where the status changed; delete the rest. Active batches and batch rows are never touched."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than", default="30d", help="Age of the finish time, like 30d, 12h or 90m (default 30d)."
        )
        parser.add_argument("--dry-run", action="store_true", help="Report what would be deleted; delete nothing.")

    def handle(self, *args, older_than, dry_run, **options):
        cutoff = cutoff_for(older_than)
        finished_before_cutoff = Q(finished_at__lt=cutoff) | Q(finished_at__isnull=True, last_changed_at__lt=cutoff)
        old_batches = Batch.objects.finished().filter(finished_before_cutoff).order_by("pk")
        batch_ids = dict(old_batches.values_list("pk", "batch_id"))
        pks = list(batch_ids)

        kept = deleted = 0
        for start in range(0, len(pks), BATCHES_PER_CHUNK):
            chunk = {pk: batch_ids[pk] for pk in pks[start : start + BATCHES_PER_CHUNK]}
            with transaction.atomic():
                chunk_kept, chunk_deleted = self._prune(chunk, dry_run=dry_run, verbose=options["verbosity"] > 1)
            kept += chunk_kept
            deleted += chunk_deleted

        summary = (
            f"{len(batch_ids)} finished batch(es) finished before {cutoff:%Y-%m-%d %H:%M} UTC examined: "
            f"{kept} snapshot(s) kept, {deleted} {'would be deleted' if dry_run else 'deleted'}."
        )
        if dry_run:
            summary = f"Dry run, nothing deleted. {summary}"
        self.stdout.write(self.style.SUCCESS(summary) if deleted and not dry_run else summary)

    def _prune(self, batch_ids: dict[int, str], *, dry_run: bool, verbose: bool) -> tuple[int, int]:
        """Prune the batches whose {pk: batch id} are given; returns (kept, deleted or to delete)."""
        rows = (
            BatchSnapshot.objects.filter(batch_id__in=list(batch_ids))
            .order_by("batch_id", "observed_at", "id")
            .values_list("batch_id", "id", "status")
        )
        per_batch: dict[int, list[tuple[int, str]]] = {}
        for batch_pk, snapshot_id, status in rows:
            per_batch.setdefault(batch_pk, []).append((snapshot_id, status))

        kept = 0
        doomed = []
        for batch_pk, snapshots in per_batch.items():
            batch_doomed = snapshots_to_delete(snapshots)
            kept_here = len(snapshots) - len(batch_doomed)
            kept += kept_here
            doomed.extend(batch_doomed)
            if verbose and batch_doomed:
                verb = "would delete" if dry_run else "deleted"
                self.stdout.write(f"  {batch_ids[batch_pk]}: kept {kept_here}, {verb} {len(batch_doomed)}")
        if not dry_run:
            for start in range(0, len(doomed), DELETE_CHUNK):
                BatchSnapshot.objects.filter(id__in=doomed[start : start + DELETE_CHUNK]).delete()
        return kept, len(doomed)
