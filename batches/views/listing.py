"""The batch list page and its live table fragment: filters, search, status counts, summary, pagination."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.conf import settings
from django.core.cache import cache
from django.core.cache.backends.locmem import LocMemCache
from django.core.paginator import Paginator
from django.http import HttpResponse, QueryDict
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_safe
from django.views.decorators.vary import vary_on_headers

from batches import access, list_figures, services
from batches.freshness import Freshness, note_watched
from batches.models import (
    ACTIVE_FILTER,
    ATTENTION_FILTER,
    DEFAULT_SORT,
    FAILED_LINES_FILTER,
    SORTS,
    Batch,
    DailySpend,
    data_version,
    summary_of,
)
from batches.normalise import UNKNOWN_STATUS
from batches.spending import report_for
from batches.views.live import Live, answer_key, is_poll, is_shown, live_of, poll_status, rendering_key, unchanged

PAGE_SIZE = 50
# Long enough for a compatible provider's ids (a job filter, a search for one), bounded all the same.
MAX_FILTER_LENGTH = services.ID_LENGTH
STATUS_FILTERS = (ACTIVE_FILTER, ATTENTION_FILTER, FAILED_LINES_FILTER, *services.RECORDED_STATUSES)
# The sortable columns, each first sorted in its more useful direction.
SORT_COLUMNS = {"created": "-created", "status": "status", "progress": "-progress", "expires": "expires"}
SORT_WORDS = {
    "-created": "newest first",
    "created": "oldest first",
    "status": "by status, running first",
    "-status": "by status, finished first",
    "-progress": "most processed first",
    "progress": "least processed first",
    "expires": "expiring soonest first",
    "-expires": "expiring last first",
}
QUERY_NAMES = (
    "status",
    "connection",
    "endpoint",
    "model",
    "q",
    "created_from",
    "created_to",
    "jobs",
    "job",
    "sort",
)
ORIGINALS_ONLY = "originals"
# Columns the list never shows: the payload can be large, each column read is a value converted per row, and a row's
# rendering is kept by every column read (batchboard.list_rows), so one no row shows would only re-render it.
UNUSED_COLUMNS = ("payload", "search_text", "payload_hash", "first_seen_at", "last_seen_at", "refresh_claimed_at")
# Polls of one list URL share a rendering for the refresh interval, and at most this long, so that "3 minutes ago"
# and an expired cancel claim (the only changes that no data_version() marks) are never older than this on screen.
FRAGMENT_CACHE_MAX_SECONDS = 10
# Those renderings, in this process's memory rather than the shared cache: a key never names two renderings, so a
# process may keep its own. Writing 60-100 KB to the database cache cost more (2.2 ms on PostgreSQL) than rendering the
# table with its rows already rendered (batchboard.list_rows), and a read from the shared cache is a round trip each;
# several processes each render a change once. Bounded: at most about 10 MB per process.
TABLE_RENDERINGS = LocMemCache(
    "batchboard-list-table",
    {"TIMEOUT": FRAGMENT_CACHE_MAX_SECONDS, "OPTIONS": {"MAX_ENTRIES": 120, "CULL_FREQUENCY": 3}},
)
# Figures computed per data version are kept this long at most (data_version() marks every change they show).
DATA_VERSION_CACHE_SECONDS = 300


@dataclass(frozen=True)
class ListFilters:
    status: str = ""
    connection: str = ""  # a slug of one of the viewer's connections
    endpoint: str = ""
    model: str = ""
    q: str = ""
    created_from: str = ""  # YYYY-MM-DD, in the viewer's time zone
    created_to: str = ""  # YYYY-MM-DD, inclusive
    jobs: str = ""  # ORIGINALS_ONLY: retries left out
    job: str = ""  # a batch id: that job only, its original batch and every retry of it
    sort: str = ""  # one of SORTS; "" is the default (newest first)

    @property
    def any(self) -> bool:
        return bool(self.status or self.narrows_counts)

    @property
    def count(self) -> int:
        """How many filters of the filter form are set (a date range counts once), for its "Filters (n)" label."""
        return sum(
            bool(value)
            for value in (
                self.connection,
                self.q,
                self.endpoint,
                self.model,
                self.created_from or self.created_to,
                self.jobs,
            )
        )

    @property
    def narrows_counts(self) -> bool:
        """Whether the status counts are those of fewer than every batch."""
        return bool(self.connection) or self.narrows_within_connection

    @property
    def narrows_within_connection(self) -> bool:
        """Whether a filter other than the connection narrows the counts (then they are this request's own)."""
        return bool(
            self.endpoint or self.model or self.q or self.created_from or self.created_to or self.jobs or self.job
        )

    @property
    def created_range(self) -> tuple[datetime | None, datetime | None]:
        start = _start_of(date.fromisoformat(self.created_from)) if self.created_from else None
        end = _start_of(date.fromisoformat(self.created_to) + timedelta(days=1)) if self.created_to else None
        return start, end

    @property
    def metadata_terms(self) -> list[tuple[str, str]]:
        """The `key:value` words of the search."""
        terms = [word.partition(":") for word in self.q.split()]
        return [(key, value) for key, separator, value in terms if separator and key and value]

    @property
    def sort_words(self) -> str:
        return SORT_WORDS[self.sort or DEFAULT_SORT]

    def query(self) -> QueryDict:
        query = QueryDict(mutable=True)
        for name in QUERY_NAMES:
            if value := getattr(self, name):
                query[name] = value
        return query


@require_safe
@vary_on_headers("HX-Request")
def batch_list(request):
    freshness = access.list_freshness_for(request.user)
    note_watched(freshness)  # The sync loop refreshes at the short interval while someone is watching.
    can_cancel = bool(access.connections(request.user, access.CANCEL))
    live = live_of(request, freshness)
    version = data_version()  # read after this request's refresh, so a rendering is never older than its key
    rendering = _rendering_key(request, freshness, live, version, can_cancel=can_cancel)
    if is_poll(request):
        return _table_fragment(request, freshness, live, rendering, version, can_cancel=can_cancel)
    context = list_context(request.GET, freshness, can_cancel=can_cancel, version=version, user=request.user)
    context.update(live=live, answer_key=answer_key(rendering))
    scope = access.scope_key(request.user)
    visible = access.visible_batches(request.user)
    menus = _per_data_version(f"menus:{scope}", context["data_version"], visible.endpoints_and_models)
    context["endpoints"], context["models"] = menus
    context["api_freshness"] = freshness  # The auth banner's: the list's own, so no second read.
    return render(request, "batches/batch_list.html", context)


def _table_fragment(
    request, freshness: Freshness, live: Live, rendering: str, version: tuple, *, can_cancel: bool
) -> HttpResponse:
    """The polled table: empty when the poller shows this very answer already; otherwise many viewers polling one
    URL get one rendering per process and change of the data (or per interval)."""
    key = answer_key(rendering)
    if is_shown(request, key):
        return unchanged()
    seconds = min(settings.BATCHBOARD_REFRESH_INTERVAL, FRAGMENT_CACHE_MAX_SECONDS)
    if seconds > 0 and (cached := TABLE_RENDERINGS.get(rendering)) is not None:
        content, status = cached
        return HttpResponse(content, status=status)
    context = list_context(request.GET, freshness, can_cancel=can_cancel, version=version, user=request.user)
    context.update(oob=True, live=live, answer_key=key)
    status = poll_status(context["polling"])
    response = render(request, "batches/batch_list.html#batch-table", context, status=status)
    if seconds > 0:
        TABLE_RENDERINGS.set(rendering, (response.content, status), seconds)
    return response


def _rendering_key(request, freshness: Freshness, live: Live, version: tuple, *, can_cancel: bool) -> str:
    """Everything the table's markup depends on: the URL, what the user may do (it has no CSRF token or other
    secret: htmx sends the token from <body>), the data's version, how fresh it is, the polling interval and the day
    (the summary counts today's batches).
    A cached rendering is at most FRAGMENT_CACHE_MAX_SECONDS old, which bounds its relative times."""
    return rendering_key(
        "list",
        request.path,
        sorted(request.GET.lists()),
        can_cancel,
        access.scope_key(request.user),
        ",".join(str(connection.pk) for connection in access.connections(request.user, access.CANCEL)),
        bool(access.connections(request.user, access.CREATE)),
        version,
        freshness.display_key() if freshness.may_change else None,
        live.every,
        timezone.localdate().isoformat(),
    )


def list_context(
    query: QueryDict, freshness: Freshness, *, can_cancel: bool, user, version: tuple | None = None
) -> dict:
    """Everything the table fragment shows for a list URL's query, of the batches `user` may see: used by the list
    and by the cancel views. `version` is data_version() if the caller has read it already (before any row)."""
    viewable = access.connections(user)
    filters, notices = parse_filters(query, viewable)
    visible = access.visible_batches(user)
    chosen = next((connection for connection in viewable if connection.slug == filters.connection), None)
    matching = visible.matching(
        connection_id=chosen.pk if chosen else None,
        endpoint=filters.endpoint,
        model=filters.model,
        q=filters.q,
        created_range=filters.created_range,
        originals=filters.jobs == ORIGINALS_ONLY,
        job=filters.job,
    )
    version = version or data_version()
    today = DailySpend.day_of()
    # What the list shows of running batches (their progress is the usual change) and of final ones is computed once
    # per change for every viewer, per connection: a viewer's figures are those of their connections
    # (batches.list_figures). Under a filter other than the connection, the status figures are this request's own.
    shared_running = list_figures.running(version)
    visible_ids = access.visible_connection_ids(user)
    counted_ids = [chosen.pk] if chosen is not None else visible_ids
    visible_running = shared_running.figures(visible_ids)
    settled = list_figures.settled(version, shared_running.total, list_figures.start_of_today(), today)
    if filters.narrows_within_connection:
        figures = {**matching.settled_figures(), **matching.running_figures()}
    else:  # final and running statuses are disjoint
        figures = {**settled.figures(counted_ids), **shared_running.figures(counted_ids)}
    counts = {status: status_figures["count"] for status, status_figures in figures.items()}
    attention = sum(status_figures["attention"] for status_figures in figures.values())
    failed_lines = sum(status_figures["failed_lines"] for status_figures in figures.values())
    summary = summary_of(visible_running, settled.finished(visible_ids))
    spending = report_for(
        user, today=today, daily=settled.spend(visible_ids), running=shared_running.spend(visible_ids), teams=False
    )
    batches = matching.with_status(filters.status).sorted_by(filters.sort)
    batches = batches.defer(*UNUSED_COLUMNS)
    paginator = Paginator(batches, PAGE_SIZE)
    # The status counts hold the number already: spare the paginator a COUNT (a second scan for a search).
    known = {ATTENTION_FILTER: attention, FAILED_LINES_FILTER: failed_lines}
    paginator.count = known.get(filters.status, _count_with_status(filters.status, counts))
    page_number, page_notice = _page_number(query.get("page", ""), paginator.num_pages)
    if page_notice:
        notices.append(page_notice)
    page = paginator.page(page_number)
    rows = list(page.object_list)
    Batch.objects.count_retries(rows)
    cancellable = {connection.pk for connection in access.connections(user, access.CANCEL)}
    by_id = {connection.pk: connection for connection in viewable}
    for row in rows:
        row.viewer_may_cancel = row.connection_id in cancellable
        if row.connection_id in by_id:  # the viewer's connections are read already: no query per row
            row.connection = by_id[row.connection_id]
    show_connections = access.sees_several(user)
    list_query = filters.query()
    if page_number > 1:
        list_query["page"] = str(page_number)
    return {
        "filters": filters,
        "notices": notices,
        "page": page,
        "rows": rows,
        "page_range": list(paginator.get_elided_page_range(page_number, on_each_side=2, on_ends=1)),
        "status_counts": _status_counts(counts, attention, failed_lines),
        "sort_columns": _sort_columns(filters),
        "total_matching": sum(counts.values()),
        "summary": summary,
        "spending": spending,
        "freshness": freshness,
        # Anything on screen can still change while a batch is not final (it may also enter a filtered view, and
        # it moves the counts and the summary), or while the API is failing or not yet answered.
        "polling": freshness.may_change or summary["running"] > 0,
        "list_query": list_query,
        "list_url": reverse("batches:list") + (f"?{list_query.urlencode()}" if list_query else ""),
        "can_cancel": can_cancel,
        "can_create": bool(access.connections(user, access.CREATE)),
        "data_version": version,
        "selectable": any(row.viewer_may_cancel and row.can_cancel_now for row in rows),
        "show_connections": show_connections,
        "connection_choices": viewable if show_connections else [],
        "connection_counts": _connection_counts(viewable, shared_running, settled) if show_connections else [],
        "column_count": 7 + 2 * can_cancel + show_connections,
    }


def _connection_counts(viewable: list, running: list_figures.Running, settled: list_figures.Settled) -> list[dict]:
    """Per connection the viewer sees: how many of its batches run, need attention, and exist, from the figures kept
    for every viewer (batches.list_figures). A connection without any batch is left out (the filter still offers
    it)."""
    counts = []
    for connection in viewable:
        running_figures = running.figures([connection.pk]).values()
        every_figure = [*running_figures, *settled.figures([connection.pk]).values()]
        if every_figure:
            counts.append(
                {
                    "connection": connection,
                    "running": sum(figures["count"] for figures in running_figures),
                    "attention": sum(figures["attention"] for figures in every_figure),
                    "total": sum(figures["count"] for figures in every_figure),
                }
            )
    return counts


def _per_data_version(name: str, version: tuple, compute, *, seconds: int = DATA_VERSION_CACHE_SECONDS):
    """`compute()`, shared by every request until the data changes: over 100,000 batches the status counts and the
    filter menus are index scans of tens of milliseconds each, and they change only when a batch is recorded."""
    key = _version_key(name, version)
    value = cache.get(key)
    if value is None:
        value = compute()
        cache.set(key, value, seconds)
    return value


def _version_key(name: str, version: tuple) -> str:
    return f"batchboard:list-{name}:" + hashlib.sha256(repr(version).encode()).hexdigest()


def list_query_of(url_path: str | None) -> QueryDict:
    """The query of a list URL (e.g. htmx's HX-Current-URL), or an empty one for any other page."""
    if not url_path:
        return QueryDict()
    path, _, query = url_path.partition("?")
    return QueryDict(query) if path == reverse("batches:list") else QueryDict()


def parse_filters(query: QueryDict, viewable: list) -> tuple[ListFilters, list[str]]:
    """The filters in a list URL; unknown values are ignored with a notice rather than failing. `viewable` are the
    viewer's connections: a slug of another one gets the same notice as one that does not exist."""
    notices = []
    # NUL cannot be stored or compared in PostgreSQL text (a query with one fails), and no id or metadata holds one.
    values = {name: query.get(name, "").replace("\x00", "").strip()[:MAX_FILTER_LENGTH] for name in QUERY_NAMES}
    if values["status"] and values["status"] not in STATUS_FILTERS:
        notices.append(f"There is no status “{values['status']}”; showing every status.")
        values["status"] = ""
    if values["connection"] and values["connection"] not in {connection.slug for connection in viewable}:
        notices.append(f"There is no connection “{values['connection'][:50]}”; showing every connection.")
        values["connection"] = ""
    # Checked as sent: an id of any connection's shape, and never one that had a NUL taken out of it.
    if values["job"] and not services.ANY_ID_PATTERN.fullmatch(query.get("job", "").strip()):
        notices.append(f"“{values['job'][:40]}” is not a batch id; showing every job.")
        values["job"] = ""
    if values["jobs"] and values["jobs"] != ORIGINALS_ONLY:
        notices.append(f"There is no job filter “{values['jobs'][:40]}”; showing every batch.")
        values["jobs"] = ""
    if values["sort"] and values["sort"] not in SORTS:
        notices.append(f"batchboard cannot sort by “{values['sort'][:40]}”; showing the newest first.")
        values["sort"] = ""
    if values["sort"] == DEFAULT_SORT:
        values["sort"] = ""
    for name, words in (("created_from", "from"), ("created_to", "to")):
        if values[name]:
            try:
                date.fromisoformat(values[name])
            except ValueError:
                notices.append(
                    f"“{values[name][:20]}” is not a date (YYYY-MM-DD); the “created {words}” filter is off."
                )
                values[name] = ""
    return ListFilters(**values), notices


def _page_number(raw: str, num_pages: int) -> tuple[int, str]:
    """The page to show and, for a page that does not exist, a notice saying which one is shown instead."""
    raw = raw.strip()
    if not raw:
        return 1, ""
    try:
        number = int(raw)
    except ValueError:
        return 1, f"“{raw[:20]}” is not a page number; showing the first page."
    if number < 1:
        return 1, f"There is no page {number}; showing the first page."
    if number > num_pages:
        return num_pages, f"There is no page {number}; showing the last page ({num_pages})."
    return number, ""


def _count_with_status(status: str, counts: dict[str, int]) -> int:
    """How many batches the status filter keeps (see BatchQuerySet.with_status), from the counts per status."""
    if status == ACTIVE_FILTER:
        return sum(n for name, n in counts.items() if not services.is_terminal(name))
    return counts.get(status, 0) if status else sum(counts.values())


def _status_counts(counts: dict[str, int], attention: int, failed_lines: int) -> list[dict]:
    """The status filter's entries: active, needs attention, has failed lines, then each status in lifecycle order,
    with counts."""
    entries = [
        {"value": ACTIVE_FILTER, "label": "active", "count": _count_with_status(ACTIVE_FILTER, counts)},
        {"value": ATTENTION_FILTER, "label": "needs attention", "count": attention},
        {"value": FAILED_LINES_FILTER, "label": "has failed lines", "count": failed_lines},
    ]
    entries += [
        {"value": s, "label": services.status_label(s), "count": counts.get(s, 0)}
        for s in services.LIFECYCLE
        if s != UNKNOWN_STATUS or counts.get(s)  # offered only while some batch has a status batchboard does not know
    ]
    return entries


def _sort_columns(filters: ListFilters) -> dict[str, dict]:
    """For each sortable column: the sort its header link applies (the current one reversed, else its first
    direction) and its aria-sort state."""
    current = filters.sort or DEFAULT_SORT
    columns = {}
    for column, first in SORT_COLUMNS.items():
        if current.removeprefix("-") == column:
            reverse = current[1:] if current.startswith("-") else f"-{current}"
            state = "descending" if current.startswith("-") else "ascending"
            columns[column] = {"sort": "" if reverse == DEFAULT_SORT else reverse, "state": state}
        else:
            columns[column] = {"sort": "" if first == DEFAULT_SORT else first, "state": ""}
    return columns


def _start_of(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))
