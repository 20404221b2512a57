"""One result per job: for each custom_id of the original input, the latest answer that succeeded anywhere in the
chain of retries, else the last failure; computed in SQL over the results index.

Cost model: a page is one query of ROWS_PER_PAGE original lines, each with a correlated subquery that picks its best
line through the (archive, custom_id) index (one probe per kept batch of the job), then one query for those best
lines. The counts of lines still failing probe the index only for the lines the original batch did not answer (the
number of lines comes from the summary written at indexing). Exports stream the same query in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.core.cache import cache
from django.core.paginator import Paginator
from django.db.models import Case, Count, IntegerField, OuterRef, Q, Subquery, Value, When
from django.urls import reverse

from batches.lineage_keys import LineageState
from batches.models import Batch
from results.links import request_links
from results.models import ArchiveState, Outcome, ResultArchive, ResultLine
from retries.lineage import chain

ROWS_PER_PAGE = 50
EXPORT_CHUNK = 1000
COUNTS_CACHE_SECONDS = 3600
SHOW_ALL = "all"
SHOW_FAILING = "failing"


def show_of(query) -> str:
    """The `show` a URL's query asks for: SHOW_FAILING, else SHOW_ALL (whatever else it says)."""
    return SHOW_FAILING if query.get("show") == SHOW_FAILING else SHOW_ALL


@dataclass
class Job:
    """A job's batches in order (original first) and the archives kept of them.

    A split file's job (`parts`: the batches its parts were sent as, in order, batches.lineage_keys) merges every
    part with its own retries: the original lines are the parts' lines in part order, and a custom_id (unique across
    the whole file) finds its best answer among every kept batch of the job."""

    job_id: str
    batches: list[Batch]
    archives: dict[int, ResultArchive] = field(default_factory=dict)  # batch pk -> ready archive
    parts: list[Batch] = field(default_factory=list)

    @property
    def original(self) -> Batch | None:
        return next((batch for batch in self.batches if batch.batch_id == self.job_id), None)

    @property
    def is_split(self) -> bool:
        return bool(self.parts)

    @property
    def roots(self) -> list[Batch]:
        """The batches whose input lines are the job's lines: the parts, or the original alone."""
        return self.parts or [batch for batch in [self.original] if batch is not None]

    @property
    def root_archives(self) -> list[ResultArchive]:
        """The roots' kept archives in order, once every root's is kept ([] until then)."""
        archives = [self.archives.get(root.pk) for root in self.roots]
        return archives if archives and all(archives) else []

    @property
    def part_count(self) -> int:
        """The parts the file was sent as (what its first part's metadata says), 1 for a file sent whole."""
        return self.parts[0].parts if self.parts else 1

    @property
    def request_counts(self) -> tuple[int, int, int]:
        """(total, completed, failed) requests over the roots: the whole file's progress (a retry resends lines
        already counted)."""
        roots = self.roots
        return (
            sum(root.total_requests for root in roots),
            sum(root.completed_requests for root in roots),
            sum(root.failed_requests for root in roots),
        )

    @property
    def running(self) -> list[Batch]:
        """The batches of the job that are not final: what Cancel job cancels."""
        return [batch for batch in self.batches if not batch.is_terminal]

    def cost_total(self):
        """What every batch of the job cost (parts and retries): one aggregate."""
        return Batch.objects.filter(pk__in=[batch.pk for batch in self.batches]).cost_total()

    @property
    def roots_not_kept(self) -> list[Batch]:
        """The roots whose results are not kept (yet): the merged results wait for them."""
        return [root for root in self.roots if root.pk not in self.archives]

    @property
    def root_archive(self) -> ResultArchive | None:
        """The first root's archive once every root's results are kept: the merged results can be read."""
        archives = self.root_archives
        return archives[0] if archives else None

    @property
    def line_offsets(self) -> dict[int, int]:
        """archive id -> the lines of the file before its root's first line (0 but for the later parts)."""
        offsets, before = {}, 0
        for archive in self.root_archives:
            offsets[archive.pk] = before
            before += archive.summary.get("input_lines", 0)
        return offsets

    @property
    def archive_ids(self) -> list[int]:
        """Ready archives, in chain order."""
        return [self.archives[batch.pk].pk for batch in self.batches if batch.pk in self.archives]

    @property
    def retries(self) -> list[Batch]:
        roots = {root.pk for root in self.roots}
        return [batch for batch in self.batches if batch.pk not in roots]

    @property
    def pending(self) -> list[Batch]:
        """Retries whose results are not kept (yet): the merged result does not count them."""
        return [batch for batch in self.retries if batch.pk not in self.archives]


def load_job(job_id: str, connection_id: int | None = None) -> Job:
    """The job of `job_id`, or the split job it is a part of (its first part's)."""
    root = Batch.objects.filter(connection_id=connection_id, batch_id=job_id).only("part_of").first()
    if connection_id is not None and root is not None and root.part_of:
        parts = Batch.objects.parts_of(root.part_of, connection_id)
        if parts:
            return _load_split_job(parts)
    batches = list(chain(job_id, connection_id).order_by("created_at", "batch_id"))
    # The original first even if its clock says otherwise.
    batches.sort(key=lambda batch: batch.batch_id != job_id)
    return _with_archives(Job(job_id=job_id, batches=batches))


def _load_split_job(parts: list[Batch]) -> Job:
    """Each part, then its verified retries (by created_at), part after part: one query for the retries."""
    ids = [part.batch_id for part in parts]
    retries = Batch.objects.filter(connection_id=parts[0].connection_id, job__in=ids).exclude(batch_id__in=ids)
    retries = retries.filter(lineage_state=LineageState.VERIFIED).order_by("created_at", "batch_id")
    by_part: dict[str, list[Batch]] = {}
    for retry in retries:
        by_part.setdefault(retry.job, []).append(retry)
    batches = [batch for part in parts for batch in [part, *by_part.get(part.batch_id, [])]]
    return _with_archives(Job(job_id=parts[0].batch_id, batches=batches, parts=parts))


def _with_archives(job: Job) -> Job:
    batches = job.batches
    archives = ResultArchive.objects.filter(batch__in=batches, state=ArchiveState.READY)
    by_batch = {archive.batch_id: archive for archive in archives}
    for batch in batches:
        if batch.pk in by_batch:
            by_batch[batch.pk].batch = batch
    job.archives = by_batch
    return job


def job_of(batch: Batch) -> Job:
    """The job `batch` belongs to, on its connection."""
    return load_job(batch.job_id, batch.connection_id)


def _rank(job: Job):
    """Later in the chain ranks higher."""
    return Case(
        *[When(archive_id=archive_id, then=Value(rank)) for rank, archive_id in enumerate(job.archive_ids)],
        default=Value(-1),
        output_field=IntegerField(),
    )


def _best(job: Job, column: str = "pk"):
    """A column of the job's best line for the outer line's custom_id: a success before a failure, then the latest.
    Filtered on custom_id only (never on outcome), so SQLite probes the (archive, custom_id) index."""
    candidates = ResultLine.objects.filter(
        archive_id__in=job.archive_ids, custom_id=OuterRef("custom_id"), line_number__isnull=False, duplicate=False
    )
    succeeded = Case(When(outcome=Outcome.SUCCEEDED, then=Value(1)), default=Value(0), output_field=IntegerField())
    ranked = candidates.annotate(succeeded=succeeded, rank=_rank(job)).order_by("-succeeded", "-rank", "-pk")
    return Subquery(ranked.values(column)[:1])


def original_lines(job: Job):
    return ResultLine.objects.filter(archive_id__in=[archive.pk for archive in job.root_archives]).input_lines()


def _in_file_order(lines, job: Job):
    """Part after part, each in its own order."""
    roots = [archive.pk for archive in job.root_archives]
    if len(roots) == 1:
        return lines.order_by("position")
    part = Case(*[When(archive_id=pk, then=Value(n)) for n, pk in enumerate(roots)], output_field=IntegerField())
    return lines.order_by(part, "position")


def still_failing(job: Job):
    """Original lines no batch of the job answered successfully, each with its last outcome (`final`)."""
    unanswered = [outcome for outcome in Outcome.values if outcome != Outcome.SUCCEEDED]  # an IN uses the index
    lines = original_lines(job).filter(outcome__in=unanswered).annotate(final=_best(job, "outcome"))
    return lines.exclude(final=Outcome.SUCCEEDED)


def _selected(job: Job, show: str):
    return still_failing(job) if show == SHOW_FAILING else original_lines(job)


def lines_after(job: Job, lines, archive_id: int, position: int):
    """`lines` (of the job's originals) after the line at `position` of the root archive `archive_id`, in file order:
    a cursor that stays right across a split file's parts (positions restart in each part). ValueError for an
    archive that is no root of the job."""
    roots = [archive.pk for archive in job.root_archives]
    later = roots[roots.index(archive_id) + 1 :]
    return lines.filter(Q(archive_id__in=later) | Q(archive_id=archive_id, position__gt=position))


def merged_lines(job: Job, show: str = SHOW_ALL):
    return _in_file_order(_selected(job, show).annotate(best_id=_best(job)), job)


@dataclass(frozen=True)
class Counts:
    total: int
    failing: dict[str, int]  # final outcome -> lines, of the lines still without an answer

    @property
    def failing_pairs(self) -> list[tuple[str, int]]:
        """(outcome, lines) of the lines still failing, most first: what the page lists."""
        return sorted(self.failing.items(), key=lambda pair: (-pair[1], pair[0]))

    @property
    def failing_total(self) -> int:
        return sum(self.failing.values())

    @property
    def succeeded(self) -> int:
        return self.total - self.failing_total


def counts(job: Job) -> Counts:
    """The still failing lines grouped by their last outcome: one query over the lines the original batch did not
    answer, cached until another batch of the job is kept (the key names every kept archive)."""
    key = "batchboard:final-counts:" + ":".join(str(archive_id) for archive_id in job.archive_ids)
    failing = cache.get(key)
    if failing is None:
        rows = still_failing(job).order_by().values("final").annotate(lines=Count("pk"))
        failing = {row["final"]: row["lines"] for row in rows}
        cache.set(key, failing, COUNTS_CACHE_SECONDS)
    return Counts(total=sum(archive.summary.get("input_lines", 0) for archive in job.root_archives), failing=failing)


@dataclass
class MergedRow:
    original: ResultLine
    best: ResultLine | None
    batch: Batch | None  # the batch whose answer is shown
    url: str = ""  # the request page of the line shown
    batch_url: str = ""
    line_number: int | None = None  # in the whole input file (a later part's lines follow the earlier parts')

    @property
    def line(self) -> ResultLine:
        return self.best or self.original

    @property
    def from_retry(self) -> bool:
        return self.best is not None and self.best.archive_id != self.original.archive_id


def rows_for(job: Job, originals: list[ResultLine]) -> list[MergedRow]:
    """The rows of `originals` (annotated with best_id) with their best lines: one query."""
    best = ResultLine.objects.in_bulk([line.best_id for line in originals if line.best_id])
    batches = {archive.pk: batch for batch in job.batches if (archive := job.archives.get(batch.pk))}
    links = {pk: request_links(batch.batch_id) for pk, batch in batches.items()}
    detail_urls = {pk: reverse("batches:detail", args=[batch.batch_id]) for pk, batch in batches.items()}
    offsets = job.line_offsets
    rows = []
    for line in originals:
        chosen = best.get(line.best_id)
        row = MergedRow(line, chosen, batches.get(chosen.archive_id) if chosen else None)
        if line.line_number is not None:
            row.line_number = line.line_number + offsets.get(line.archive_id, 0)
        if chosen is not None:
            row.url = links[chosen.archive_id](chosen.position)
            row.batch_url = detail_urls[chosen.archive_id]
        rows.append(row)
    return rows


def page(job: Job, show: str, number, total: int | None = None):
    """One page: its positions first (an index scan, no subquery for the rows skipped), then those rows."""
    paginator = Paginator(_in_file_order(_selected(job, show), job).values_list("pk", flat=True), ROWS_PER_PAGE)
    if total is not None:
        paginator.count = total  # known already: saves counting again
    result = paginator.get_page(number)
    lines = _in_file_order(
        original_lines(job).filter(pk__in=list(result.object_list)).annotate(best_id=_best(job)), job
    )
    result.object_list = rows_for(job, list(lines))
    return result


def iter_rows(job: Job, show: str = SHOW_ALL):
    """Every merged row in input order (part after part), streamed in chunks of EXPORT_CHUNK."""
    for root in job.root_archives:
        lines = _selected(job, show).filter(archive_id=root.pk).annotate(best_id=_best(job)).order_by("position")
        last = -1
        while True:
            chunk = list(lines.filter(position__gt=last)[:EXPORT_CHUNK])
            if not chunk:
                break
            yield from rows_for(job, chunk)
            last = chunk[-1].position
