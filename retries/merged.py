"""One result per job: for each custom_id of the original input, the latest answer that succeeded anywhere in the
chain of retries, else the last failure; computed in SQL over the results index.

Cost model: a page is one COUNT and one query of ROWS_PER_PAGE original lines, each with a correlated subquery that
picks its best line through the (archive, custom_id) index (one probe per kept batch of the job), then one query for
those best lines. The counts of lines still failing probe the index only for lines the original batch did not
answer. Exports stream the same query in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.core.paginator import Paginator
from django.db.models import Case, Count, Exists, IntegerField, OuterRef, Subquery, Value, When

from batches.models import Batch
from results.models import ArchiveState, Outcome, ResultArchive, ResultLine
from retries.lineage import chain

ROWS_PER_PAGE = 100
EXPORT_CHUNK = 1000
SHOW_ALL = "all"
SHOW_FAILING = "failing"


@dataclass
class Job:
    """A job's batches in order (original first) and the archives kept of them."""

    job_id: str
    batches: list[Batch]
    archives: dict[int, ResultArchive] = field(default_factory=dict)  # batch pk -> ready archive

    @property
    def original(self) -> Batch | None:
        return next((batch for batch in self.batches if batch.batch_id == self.job_id), None)

    @property
    def root_archive(self) -> ResultArchive | None:
        original = self.original
        return self.archives.get(original.pk) if original else None

    @property
    def archive_ids(self) -> list[int]:
        """Ready archives, in chain order."""
        return [self.archives[batch.pk].pk for batch in self.batches if batch.pk in self.archives]

    @property
    def retries(self) -> list[Batch]:
        return [batch for batch in self.batches if batch.batch_id != self.job_id]

    @property
    def pending(self) -> list[Batch]:
        """Retries whose results are not kept (yet): the merged result does not count them."""
        return [batch for batch in self.retries if batch.pk not in self.archives]


def load_job(job_id: str) -> Job:
    batches = list(chain(job_id).order_by("created_at", "batch_id"))
    # The original first even if its clock says otherwise.
    batches.sort(key=lambda batch: batch.batch_id != job_id)
    archives = ResultArchive.objects.filter(batch__in=batches, state=ArchiveState.READY)
    by_batch = {archive.batch_id: archive for archive in archives}
    for batch in batches:
        if batch.pk in by_batch:
            by_batch[batch.pk].batch = batch
    return Job(job_id=job_id, batches=batches, archives=by_batch)


def _rank(job: Job):
    """Later in the chain ranks higher."""
    return Case(
        *[When(archive_id=archive_id, then=Value(rank)) for rank, archive_id in enumerate(job.archive_ids)],
        default=Value(-1),
        output_field=IntegerField(),
    )


def _best_line(job: Job):
    """The best line of the job for the outer line's custom_id: a success before a failure, then the latest."""
    candidates = ResultLine.objects.filter(
        archive_id__in=job.archive_ids, custom_id=OuterRef("custom_id"), line_number__isnull=False, duplicate=False
    )
    succeeded = Case(When(outcome=Outcome.SUCCEEDED, then=Value(1)), default=Value(0), output_field=IntegerField())
    ranked = candidates.annotate(succeeded=succeeded, rank=_rank(job)).order_by("-succeeded", "-rank", "-pk")
    return Subquery(ranked.values("pk")[:1])


def original_lines(job: Job):
    return ResultLine.objects.filter(archive=job.root_archive).input_lines()


def still_failing(job: Job):
    """Original lines no batch of the job answered successfully."""
    answered_later = ResultLine.objects.filter(
        archive_id__in=job.archive_ids, custom_id=OuterRef("custom_id"), outcome=Outcome.SUCCEEDED
    )
    return original_lines(job).exclude(outcome=Outcome.SUCCEEDED).exclude(Exists(answered_later))


def merged_lines(job: Job, show: str = SHOW_ALL):
    lines = still_failing(job) if show == SHOW_FAILING else original_lines(job)
    return lines.annotate(best_id=_best_line(job)).order_by("position")


@dataclass(frozen=True)
class Counts:
    total: int
    failing: dict[str, int]  # final outcome -> lines, of the lines still without an answer

    @property
    def failing_total(self) -> int:
        return sum(self.failing.values())

    @property
    def succeeded(self) -> int:
        return self.total - self.failing_total


def counts(job: Job) -> Counts:
    """Two queries: the original lines, and the still failing ones grouped by their last outcome."""
    total = original_lines(job).count()
    best_outcome = Subquery(ResultLine.objects.filter(pk=OuterRef("best_id")).values("outcome")[:1])
    rows = (
        still_failing(job)
        .annotate(best_id=_best_line(job))
        .annotate(final=best_outcome)
        .order_by()
        .values("final")
        .annotate(lines=Count("pk"))
    )
    return Counts(total=total, failing={row["final"]: row["lines"] for row in rows})


@dataclass
class MergedRow:
    original: ResultLine
    best: ResultLine | None
    batch: Batch | None  # the batch whose answer is shown

    @property
    def from_retry(self) -> bool:
        return self.best is not None and self.best.archive_id != self.original.archive_id


def rows_for(job: Job, originals: list[ResultLine]) -> list[MergedRow]:
    """The rows of `originals` (annotated with best_id) with their best lines: one query."""
    best = ResultLine.objects.in_bulk([line.best_id for line in originals if line.best_id])
    batches = {archive.pk: batch for batch in job.batches if (archive := job.archives.get(batch.pk))}
    rows = []
    for line in originals:
        chosen = best.get(line.best_id)
        rows.append(MergedRow(line, chosen, batches.get(chosen.archive_id) if chosen else None))
    return rows


def page(job: Job, show: str, number, total: int | None = None):
    paginator = Paginator(merged_lines(job, show), ROWS_PER_PAGE)
    if total is not None:
        paginator.count = total  # known already: saves counting again
    result = paginator.get_page(number)
    result.object_list = rows_for(job, list(result.object_list))
    return result


def iter_rows(job: Job, show: str = SHOW_ALL):
    """Every merged row in input order, streamed in chunks of EXPORT_CHUNK."""
    lines = merged_lines(job, show)
    last = -1
    while True:
        chunk = list(lines.filter(position__gt=last)[:EXPORT_CHUNK])
        if not chunk:
            return
        yield from rows_for(job, chunk)
        last = chunk[-1].position
