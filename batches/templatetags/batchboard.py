"""Template helpers shared by the pages: status badges, progress bars (SVG: the CSP forbids inline styles), times."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from django import template
from django.core.cache.backends.locmem import LocMemCache
from django.urls import Resolver404, resolve, reverse
from django.utils import timezone, translation
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

from batches import access, formatting
from batches.converters import detail_url

register = template.Library()


@register.simple_tag
def status_badge(batch):
    """A badge for a models.Batch or BatchSnapshot-like object with status and request counts."""
    from batches.models import status_badge as badge_for

    modifier, label = badge_for(batch.status, batch.completed_requests, batch.failed_requests, batch.total_requests)
    return format_html('<span class="badge badge-{}" data-status="{}">{}</span>', modifier, batch.status, label)


@register.simple_tag
def progress_bar(completed, failed, total):
    """A stacked bar of completed and failed requests out of total, with a text alternative."""
    total = max(int(total or 0), 0)
    completed = max(int(completed or 0), 0)
    failed = max(int(failed or 0), 0)
    if total:
        done_width = round(min(completed / total, 1.0) * 100, 2)
        failed_width = round(min(failed / total, 1.0 - done_width / 100) * 100, 2)
    else:
        done_width = failed_width = 0
    label = escape(f"{completed:,} completed, {failed:,} failed of {total:,} requests")
    # An f-string rather than format_html: every other value is a number, and the list draws one bar per row.
    return mark_safe(  # noqa: S308 - the label is escaped, the rest are numbers
        f'<svg class="progress" viewBox="0 0 100 8" preserveAspectRatio="none" role="img" aria-label="{label}">'
        f"<title>{label}</title>"
        '<rect class="progress-track" x="0" y="0" width="100" height="8"></rect>'
        f'<rect class="progress-completed" x="0" y="0" width="{done_width}" height="8"></rect>'
        f'<rect class="progress-failed" x="{done_width}" y="0" width="{failed_width}" height="8"></rect>'
        "</svg>"
    )


@register.simple_tag
def relative_time(value: datetime, now: datetime | None = None):
    """A <time> saying how long ago (or from now) `value` is, with the exact time in the tooltip."""
    # Equal to the date filter's "c" and "Y-m-d H:i:s T" formats, at a fraction of their cost (many per page).
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        timezone.localtime(value).isoformat(),
        formatting.exact(value),
        formatting.relative(value, now or timezone.now()),
    )


@register.filter
def ago(value: datetime, now: datetime | None = None) -> str:
    """`{{ when|ago:now }}`: "3 min ago" or "in 2 h 5 min", in the one duration style."""
    return formatting.relative(value, now or timezone.now()) if value else ""


@register.filter
def size(value) -> str:
    """`{{ file.size|size }}`: bytes written one way everywhere ("812 bytes", "35.9 KB")."""
    return formatting.format_size(value)


@register.simple_tag
def history_data_rows(points) -> SafeString:
    """The rows of the history's data table (chart.Point, at most MAX_CHART_POINTS), built here: through the
    template's tags and filters 200 rows cost about 10 ms a page. Times in the current zone, as the date filter's "c"
    and "Y-m-d H:i:s" write them; counts grouped as the list's."""
    rows = []
    for point in points:
        local = timezone.localtime(point.at)
        source = "API timestamp" if point.source == "api" else "observed"
        rows.append(
            f'<tr><td class="nowrap"><time datetime="{local.isoformat()}">{local:%Y-%m-%d %H:%M:%S}</time></td>'
            f'<td>{escape(point.label)}</td><td class="num">{point.completed:,}</td>'
            f'<td class="num">{point.failed:,}</td><td class="num">{point.total:,}</td><td>{source}</td></tr>'
        )
    return mark_safe("".join(rows))  # noqa: S308 - the label is escaped, the rest are numbers and times


@dataclass(frozen=True, slots=True)
class ListRow:
    """What one row of the batch list shows besides the batch's own fields, computed once per row in Python.

    Cheaper than a tag, filter or include per cell (a page has 50 rows). Made by the row itself, through the
    `list_row` filter, because the cancel view renders that row alone, from a bare batch.
    """

    detail_url: str
    badge: SafeString
    progress: SafeString
    processed: str
    total: str
    failed: str  # "" when no request failed
    created: SafeString
    expires: SafeString | None  # only running batches expire
    cancel_pending: bool
    cancellable: bool  # Batch.can_cancel_now


@register.filter
def list_row(batch, now: datetime | None = None) -> ListRow:
    """`{% with row=batch|list_row:list_now %}`: the presentation of a models.Batch on the list page, its relative
    times as of `now` (list_rows passes the moment its cache keys were computed; the cancel view passes nothing)."""
    now = now or timezone.now()
    cancel_pending = batch.cancel_pending
    url = detail_url(batch.batch_id)
    return ListRow(
        detail_url=url,
        badge=status_badge(batch),
        progress=progress_bar(batch.completed_requests, batch.failed_requests, batch.total_requests),
        # Grouped like the progress bar's label (intcomma costs ten times as much, for the same English digits).
        processed=f"{batch.processed_requests:,}",
        total=f"{batch.total_requests:,}",
        failed=f"{batch.failed_requests:,}" if batch.failed_requests else "",
        created=relative_time(batch.created_at, now),
        expires=relative_time(batch.expires_at, now) if not batch.is_terminal and batch.expires_at else None,
        cancel_pending=cancel_pending,
        cancellable=batch.can_cancel_now and bool(url),
    )


# The list's rows as rendered, by everything a row's markup depends on (see _row_key), in this process's memory: a
# function's memo rather than shared state, since a key never names two different renderings. Each poll after a
# change re-renders only the rows that changed (a row costs about as much to render as 50 cache lookups), with no
# query or round trip for the others. Bounded: 2-3 KB a row, so at most about 15 MB per process.
ROW_CACHE = LocMemCache("batchboard-list-rows", {"TIMEOUT": 600, "OPTIONS": {"MAX_ENTRIES": 5000, "CULL_FREQUENCY": 4}})
# Change when the row's markup changes, so that no process serves a rendering of the old template after a deploy
# of a new one (a process's memory does not outlive it, but keep the key honest).
ROW_MARKUP_VERSION = 1


@register.simple_tag(takes_context=True)
def list_rows(context, rows) -> list[SafeString]:
    """`{% list_rows rows as rendered %}`: the list's rows (the `batch-row` partial), each rendered once for all
    viewers and polls that would see the same markup, and again only when something it shows changes."""
    now = timezone.now()
    viewer = _viewer_key(context)
    prices = {}  # a model's price, as keyed, once per page rather than once per row
    keys = [_row_key(context, viewer, prices, batch, now) for batch in rows]
    found = ROW_CACHE.get_many([key for key in keys if key is not None])
    partial = context.template.engine.get_template("batches/batch_list.html#batch-row")
    rendered, fresh = [], {}
    for batch, key in zip(rows, keys, strict=True):
        html = found.get(key) if key is not None else None
        if html is None:
            with context.push(batch=batch, list_now=now):
                html = partial.render(context)
            if key is not None:
                fresh[key] = html
        rendered.append(mark_safe(html))  # noqa: S308 - rendered by the partial, which escapes
    if fresh:
        ROW_CACHE.set_many(fresh)
    return rendered


def _viewer_key(context) -> tuple | None:
    """What every row of one page's rendering shares: what the viewer may do and sees, their zone and language.
    None: not cached (a cancel's answer)."""
    if context.get("cancel_outcome"):
        return None
    filters = context.get("filters")
    return (
        ROW_MARKUP_VERSION,
        bool(context.get("can_cancel")),
        bool(context.get("show_connections")),
        context.get("list_url"),  # the cancel control's way back
        bool(filters and filters.q),
        timezone.get_current_timezone_name(),
        translation.get_language(),
    )


def _row_key(context, viewer: tuple | None, prices: dict, batch, now: datetime) -> str | None:
    """The key of one row's markup: every stored value of the batch the row may show (whatever path changed it),
    what the row shows from elsewhere (its retries, its connection, its price), what the viewer may do with it and
    sees of it (`viewer`, from _viewer_key), and the clock as the row shows it (its relative times, a cancel claim's
    expiry). None: not cached (a cancel's answer)."""
    if viewer is None:
        return None
    _version, can_cancel, show_connections, list_url, searching, *_ = viewer
    request = context.get("request")
    user = getattr(request, "user", None)
    may_cancel = getattr(batch, "viewer_may_cancel", None)  # the list sets it for its rows
    if may_cancel is None:
        may_cancel = user is not None and access.may(user, access.CANCEL, batch.connection_id)
    may_cancel = can_cancel and may_cancel
    # Read from the instance's __dict__: a deferred column is absent (None here) and never loaded by the key. The
    # list reads none of the columns no row shows (listing.UNUSED_COLUMNS), among them those that move without a
    # change a row shows (every sync's observation, a page's refresh claim), which would re-render every running row.
    values = batch.__dict__
    stored = tuple([values.get(field.attname) for field in batch._meta.concrete_fields])
    connection = batch.connection if show_connections else None
    if batch.model not in prices:
        prices[batch.model] = repr(batch.price)
    parts = (
        viewer,
        stored,
        getattr(batch, "retry_count", 0),
        (connection.pk, connection.slug, connection.name, connection.kind) if connection is not None else None,
        prices[batch.model],
        may_cancel,
        list_url if may_cancel else None,
        tuple(metadata_matches(batch, context.get("filters"))) if searching else (),
        formatting.relative(batch.created_at, now),
        formatting.relative(batch.expires_at, now) if not batch.is_terminal and batch.expires_at else "",
        batch.cancel_pending,
    )
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()


CANCEL_WARNING = "Requests already running finish and keep their results; the rest will not run. This cannot be undone."


@register.simple_tag(takes_context=True)
def cancel_control(context, batch, next_url: str = "", target: str = "", outcome=None):
    """The Cancel control of one batch, on the list's rows and the detail page, and the cancel view's answer.

    Nothing when the batch cannot be cancelled now (Batch.can_cancel_now) and there is no outcome to say, or when the
    user may not cancel on the batch's connection (batches.access). `next_url`: where the no-JavaScript confirm page
    returns to; `target`: the htmx target the cancel view answers for (default this control, which the answer
    replaces); `outcome`: the cancel view's CancelOutcome. Without JavaScript the link opens the confirm page; with
    htmx, static/js/live.js asks in the page's <dialog> (the data-confirm-* texts) and htmx POSTs, holding the page's
    polls meanwhile (hx-sync on the
    live region). Python, not an include: a list page has a control on every running row.
    """
    can_cancel_now = batch.can_cancel_now
    request = context.get("request")
    may_cancel = request is not None and access.may(request.user, access.CANCEL, batch.connection_id)
    if not may_cancel or not (outcome or can_cancel_now):
        return ""
    link = ""
    if can_cancel_now:
        url = reverse("batches:cancel", args=[batch.batch_id])
        description = f"“{batch.description}”: " if batch.description else ""
        link = format_html(
            '<a class="button button-small button-danger" id="cancel-link-{id}" href="{href}" hx-post="{url}" '
            'hx-params="none" hx-confirm="{warning}" data-confirm-title="Cancel {id}?" data-confirm-detail="{detail}" '
            'hx-target="{target}" hx-swap="outerHTML" hx-disabled-elt="this" hx-sync="closest [data-live]:replace">'
            'Cancel<span class="visually-hidden"> {id}</span></a>',
            id=batch.batch_id,
            href=f"{url}?next={quote(next_url, safe='')}" if next_url else url,
            url=url,
            warning=CANCEL_WARNING,
            detail=f"{description}{batch.processed_requests:,} of {batch.total_requests:,} requests processed, "
            f"{batch.status_label}.",
            target=target or "closest .cancel-control",
        )
    said = ""
    if outcome and outcome.error:
        said = format_html('<span class="inline-error" role="alert">{}</span>', outcome.error)
    elif outcome:
        words = "Cancel requested." if outcome.sent else "Cancel already requested."
        said = format_html('<span class="inline-ok" role="status">{}</span>', words)
    return format_html('<span id="cancel-{}" class="cancel-control">{}{}</span>', batch.batch_id, link, said)


@register.filter
def destination(next_url: str) -> str:
    """What the login page leads to, in words: "batch_abc…" for a shared batch link, "request r-17 of batch_abc…" for
    a shared request link, and so on; "" (just "Log in") for anything else."""
    path = (next_url or "").partition("?")[0]
    try:
        match = resolve(path) if path.startswith("/") else None
    except Resolver404:
        return ""
    if match is None:
        return ""
    batch_id = match.kwargs.get("batch_id", "")
    words = {
        "batches:list": "your batches",
        "batches:create": "the new-batch form",
        "batches:detail": batch_id,
        "results:list": f"the results of {batch_id}",
        "results:request": f"the request in row {match.kwargs.get('position')} of the results of {batch_id}",
        "results:request_of_custom_id": f"request {match.kwargs.get('custom_id')} of {batch_id}",
        "retries:final": f"the final results of {batch_id}'s job",
        "retries:confirm": f"a retry of {batch_id}",
    }
    return str(words.get(match.view_name, ""))[:200]


@register.filter
def metadata_matches(batch, filters) -> list[tuple[str, str]]:
    """The metadata pairs of `batch` that the list's search matched (`key:value` terms, or words found in a key or
    value), so the row can show why it is there; the description, shown anyway, is left out."""
    if not filters or not filters.q:
        return []
    terms = {key.lower(): value for key, value in filters.metadata_terms}
    words = [word.lower() for word in filters.q.split() if ":" not in word]
    matches = []
    for key, text in batch.metadata_pairs:
        matched = key.lower() in terms or any(word in key.lower() or word in text.lower() for word in words)
        if matched and text != batch.description:
            matches.append((key, text))
    return matches[:3]


@register.simple_tag(takes_context=True)
def render_sections(context, sections) -> SafeString:
    """The sections other apps filled for one slot of the page (batches.sections), each with the page's context and
    its own, as {% include %} would render them."""
    rendered = []
    for section in sections or ():
        with context.push(section.context):
            rendered.append(context.template.engine.get_template(section.template).render(context))
    return mark_safe("".join(rendered))  # noqa: S308 - each part is a rendered template, escaped by it


@register.inclusion_tag("batches/_connection_line.html", takes_context=True)
def connection_line(context, batch):
    """ "Connection: Research (Azure OpenAI)" on a batch's pages, for a viewer of several connections or of a batch
    outside the default one (an install with one connection looks as before). No query: the viewer's connections
    are read once per request (batches.access)."""
    request = context.get("request")
    user = getattr(request, "user", None)
    connection_id = getattr(batch, "connection_id", None)
    if user is None or not user.is_authenticated or connection_id is None:
        return {"connection": None}
    viewable = access.connections(user)
    connection = next((each for each in viewable if each.pk == connection_id), None)
    shown = connection is not None and (access.sees_several(user) or not connection.is_default)
    return {"connection": connection if shown else None}


@register.simple_tag(takes_context=True)
def connection_query(context, joiner="?"):
    """`?connection=<slug>` (or `&connection=...` with joiner "&") when this page was asked for one connection's
    batch, so that links to the batch's other pages keep naming it (an id may exist in two connections)."""
    from batches.views.common import picked_connection

    slug = picked_connection(context.get("request"))
    return f"{joiner}connection={slug}" if slug else ""


@register.simple_tag(takes_context=True)
def connection_field(context):
    """The hidden field that keeps `?connection=` in a form of a batch's page (see connection_query)."""
    from batches.views.common import picked_connection

    slug = picked_connection(context.get("request"))
    return format_html('<input type="hidden" name="connection" value="{}">', slug) if slug else ""
