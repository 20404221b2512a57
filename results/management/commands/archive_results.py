"""Ask for the results of final batches to be kept, as a task worker keeps them (e.g. after switching to
BATCHBOARD_ARCHIVE=all, or to catch up after an upgrade), and optionally fetch them here and now."""

from django.core.management.base import BaseCommand, CommandError

from batches import reactions
from batches.models import Batch, Reaction, ReactionState
from results.archive import KEEP_STEP, check_upstream, keep
from results.models import ArchiveState, ResultArchive
from results.tasks import keep_results


class Command(BaseCommand):
    help = (
        "Keep the results of final batches locally: ask for up to --limit final batches whose results are not kept "
        "yet (newest finished first; with --pending-only, only archives already asked for), which the task workers "
        "(`manage.py db_worker`) then fetch and index. With --run, fetch them in this process instead of waiting for "
        "a worker. Then check whether the API still has the files of a few kept ones."
    )

    def add_arguments(self, parser):
        parser.add_argument("--limit", type=int, default=10, help="Batches to ask for at most (default: 10).")
        parser.add_argument("--pending-only", action="store_true", help="Only archives asked for already.")
        parser.add_argument("--run", action="store_true", help="Fetch them here and now.")

    def handle(self, *args, limit, pending_only, run, **options):
        if not 1 <= limit <= 100_000:
            raise CommandError(f"--limit must be between 1 and 100000; got {limit}.")
        asked = 0
        if not pending_only:
            unkept = (
                Batch.objects.finished()
                .filter(result_archive__isnull=True)
                .exclude(output_file_id="", error_file_id="")
            )
            for batch in unkept.order_by("-finished_at")[:limit]:
                keep(batch)
                asked += 1
        pending = ResultArchive.objects.filter(
            state__in=(ArchiveState.REQUESTED, ArchiveState.RETRY, ArchiveState.ARCHIVING)
        ).values_list("batch_id", flat=True)
        for batch_pk in pending[:limit]:
            reactions.schedule(KEEP_STEP, batch_pk)  # a no-op unless asked for before results were kept by reactions
        ran = 0
        if run:
            due = Reaction.objects.filter(step=KEEP_STEP, state=ReactionState.PENDING).order_by("run_after")
            for reaction_id in due.values_list("pk", flat=True)[:limit]:
                keep_results.call(reaction_id)
                ran += 1
        checked = check_upstream()
        self.stdout.write(
            f"Asked for the results of {asked} batch{'' if asked == 1 else 'es'}; fetched {ran} here; "
            f"checked {checked} upstream. Task workers fetch the rest."
        )
