"""Results kept locally: one archive per final batch (its stored files and summary) and a per-line index into them."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import models
from django.http import QueryDict
from django.utils import timezone

from batches import services
from batches.models import Batch
from results import search

ROWS_PER_PAGE = 100
# The largest position a row can have (a PositiveIntegerField): a larger one in an address is no row, not an error.
MAX_POSITION = 2_147_483_647
# Longest text kept in the index: one line of preview, and error messages (the stored file has them in full).
PREVIEW_LENGTH = 200
MESSAGE_LENGTH = 1000
SEARCH_LENGTH = 200


class Outcome(models.TextChoices):
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    EXPIRED = "expired", "expired"
    CANCELLED = "cancelled", "cancelled"
    MISSING = "missing", "missing"


# The error codes of lines that never ran (REFERENCE §7), and the outcome each stands for.
UNRUN_CODES = {"batch_expired": Outcome.EXPIRED, "batch_cancelled": Outcome.CANCELLED}


class ArchiveState(models.TextChoices):
    REQUESTED = "requested", "waiting to be fetched"
    ARCHIVING = "archiving", "being fetched"
    READY = "ready", "kept locally"
    RETRY = "retry", "fetching failed; will retry"
    UNAVAILABLE = "unavailable", "no longer available upstream"
    PRUNED = "pruned", "pruned"


class ResultArchive(models.Model):
    """A final batch's input, output and error files kept in the results storage, and what indexing them found.

    `summary` outlives the files and the per-line index (prune_results): {"outcomes": {outcome: n}, "groups":
    [{"number", "outcome", "status", "code", "message", "count", "custom_ids"}], "codes": {code: n}, "rows",
    "input_lines", "duplicates", "unmatched", "unreadable": [{"file", "line", "reason"}], "unreadable_count",
    "input_missing"}.
    """

    batch = models.OneToOneField(Batch, on_delete=models.CASCADE, related_name="result_archive")
    state = models.CharField(max_length=12, choices=ArchiveState.choices, default=ArchiveState.REQUESTED)
    requested_at = models.DateTimeField(default=timezone.now)
    # Someone opened the results page and is waiting: its fetch is put ahead of the queue.
    wanted = models.BooleanField(default=False)
    # When someone last opened its results page (noted at most once a minute): the disk quota evicts the files opened
    # least recently first.
    last_opened_at = models.DateTimeField(null=True, blank=True)
    # The files were deleted to stay within BATCHBOARD_ARCHIVE_MAX_GB; the summary and the per-line index stay.
    evicted_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    problem = models.TextField(blank=True)

    input_file_id = models.CharField(max_length=services.ID_LENGTH, blank=True)
    output_file_id = models.CharField(max_length=services.ID_LENGTH, blank=True)
    error_file_id = models.CharField(max_length=services.ID_LENGTH, blank=True)
    input_name = models.CharField(max_length=255, blank=True)
    output_name = models.CharField(max_length=255, blank=True)
    error_name = models.CharField(max_length=255, blank=True)
    stored_bytes = models.BigIntegerField(default=0)

    archived_at = models.DateTimeField(null=True, blank=True)
    # The earliest expiry the API gave for the result files, and when it was seen to have deleted one of them.
    upstream_expires_at = models.DateTimeField(null=True, blank=True)
    upstream_deleted_at = models.DateTimeField(null=True, blank=True)
    upstream_checked_at = models.DateTimeField(null=True, blank=True)
    pruned_at = models.DateTimeField(null=True, blank=True)
    summary = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["archived_at"], name="archive_archived"),
            models.Index(fields=["state", "last_opened_at", "archived_at"], name="archive_eviction_order"),
        ]

    def __str__(self):
        return f"results of {self.batch.batch_id} ({self.state})"

    @property
    def is_ready(self) -> bool:
        return self.state == ArchiveState.READY

    @property
    def is_pending(self) -> bool:
        """A task worker will fetch (or fetch again) these results: a page showing it keeps polling."""
        return self.state in (ArchiveState.REQUESTED, ArchiveState.ARCHIVING, ArchiveState.RETRY)

    @property
    def deleted_upstream(self) -> bool:
        if self.upstream_deleted_at:
            return True
        return bool(self.upstream_expires_at and self.upstream_expires_at <= timezone.now())

    @property
    def stored_names(self) -> dict[str, str]:
        return {kind: name for kind in ("input", "output", "error") if (name := getattr(self, f"{kind}_name"))}

    @property
    def outcome_counts(self) -> dict[str, int]:
        return self.summary.get("outcomes", {})

    @property
    def code_counts(self) -> list[tuple[str, int]]:
        """(error code, lines) pairs, most frequent first: the codes come from result files, so templates get pairs,
        never the dict (a code named "items" would shadow its method)."""
        codes = self.summary.get("codes") or {}
        return list(codes.items()) if isinstance(codes, dict) else []


@dataclass(frozen=True)
class ResultFilter:
    """What the results page shows, parsed from its query string; invalid values are dropped and named in `ignored`."""

    outcome: str = ""
    code: str = ""
    status: int | None = None
    group: int | None = None
    q: str = ""
    ignored: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_query(cls, query: QueryDict) -> ResultFilter:
        ignored = []
        outcome = query.get("outcome", "").strip()
        if outcome and outcome not in Outcome.values:
            ignored.append(f"outcome “{outcome[:40]}”")
            outcome = ""
        status = _small_int(query.get("status", ""), 100, 599)
        if status is None and query.get("status", "").strip():
            ignored.append("status (an HTTP status such as 429)")
        group = _small_int(query.get("group", ""), 1, 32_767)
        if group is None and query.get("group", "").strip():
            ignored.append("group (a group number)")
        # NUL cannot be stored or searched for in PostgreSQL; no custom_id or answer holds one.
        q = query.get("q", "").replace("\x00", "").strip()[:SEARCH_LENGTH]
        code = query.get("code", "").replace("\x00", "").strip()[:64]
        return cls(outcome=outcome, code=code, status=status, group=group, q=q, ignored=tuple(ignored))

    @property
    def search_help(self) -> str:
        return search.search_help()

    @property
    def is_active(self) -> bool:
        return bool(self.outcome or self.code or self.status or self.group or self.q)

    def query(self, **changes) -> str:
        """The query string of this filter with `changes` applied (empty values dropped), for links."""
        values = {"outcome": self.outcome, "code": self.code, "status": self.status, "group": self.group, "q": self.q}
        values.update(changes)
        query = QueryDict(mutable=True)
        for name, value in values.items():
            if value not in ("", None):
                query[name] = str(value)
        return query.urlencode()


def _small_int(raw: str, low: int, high: int) -> int | None:
    raw = (raw or "").strip()
    if not raw.isdigit() or len(raw) > 5:
        return None
    value = int(raw)
    return value if low <= value <= high else None


class ResultLineQuerySet(models.QuerySet):
    def in_order(self, *, descending: bool = False):
        """Lines by position; after a search on PostgreSQL, by a position no index gives (search.searched)."""
        key = search.SEARCHED_POSITION if search.SEARCHED_POSITION in self.query.annotations else "position"
        return self.order_by(f"-{key}" if descending else key)

    def matching(self, result_filter: ResultFilter):
        """The lines a filter selects: the results page, its exports, prev/next, and retrying lines all use this."""
        queryset = self
        if result_filter.outcome:
            queryset = queryset.filter(outcome=result_filter.outcome)
        if result_filter.code:
            queryset = queryset.filter(error_code=result_filter.code)
        if result_filter.status:
            queryset = queryset.filter(status_code=result_filter.status)
        if result_filter.group:
            queryset = queryset.filter(error_group=result_filter.group)
        if result_filter.q:
            queryset = search.searched(queryset, result_filter.q)
        return queryset

    def input_lines(self):
        """Lines that came from the input file (not result lines for a custom_id the input lacks, nor duplicate
        answers), each once: what a retry resends."""
        return self.filter(line_number__isnull=False, duplicate=False)


class ResultLine(models.Model):
    """One row of the results table: an input line joined to its answer, with offsets into the stored files.

    Rows are in input order (`position`). A further answer for a custom_id that already has one is a row of its
    own right after it (`duplicate`); a result line whose custom_id is not in the input comes at the end with no
    line number. Offsets and lengths are in bytes, so the original lines can be read back byte for byte.
    """

    OUTPUT = "o"
    ERROR = "e"
    RESULT_FILES = [(OUTPUT, "output"), (ERROR, "error")]

    archive = models.ForeignKey(ResultArchive, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveIntegerField()
    line_number = models.PositiveIntegerField(null=True, blank=True)
    custom_id = models.CharField(max_length=512)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    error_group = models.PositiveSmallIntegerField(null=True, blank=True)
    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    preview = models.CharField(max_length=PREVIEW_LENGTH, blank=True)
    # What the request asked, in one line (answers.request_text): the results table's Request column and its CSV.
    prompt = models.CharField(max_length=PREVIEW_LENGTH, blank=True)
    duplicate = models.BooleanField(default=False)
    input_offset = models.BigIntegerField(null=True, blank=True)
    input_length = models.PositiveIntegerField(null=True, blank=True)
    result_file = models.CharField(max_length=1, choices=RESULT_FILES, blank=True)
    result_line = models.PositiveIntegerField(null=True, blank=True)
    result_offset = models.BigIntegerField(null=True, blank=True)
    result_length = models.PositiveIntegerField(null=True, blank=True)

    objects = ResultLineQuerySet.as_manager()

    class Meta:
        ordering = ["position"]
        constraints = [models.UniqueConstraint(fields=["archive", "position"], name="result_line_position")]
        indexes = [
            models.Index(fields=["archive", "custom_id"], name="result_line_custom_id"),
            models.Index(fields=["archive", "outcome", "position"], name="result_line_outcome"),
            models.Index(fields=["archive", "error_code", "position"], name="result_line_code"),
            models.Index(fields=["archive", "error_group", "position"], name="result_line_group"),
            models.Index(fields=["archive", "status_code", "position"], name="result_line_status"),
        ]

    def __str__(self):
        return f"{self.custom_id} ({self.outcome})"

    @property
    def total_tokens(self) -> int | None:
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)

    @property
    def result_kind(self) -> str:
        return dict(self.RESULT_FILES).get(self.result_file, "")
