"""Making and revoking share links (for users), and the read-only pages a link opens (for anyone holding it)."""

from __future__ import annotations

import functools

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_POST, require_safe

from audit.log import record
from audit.models import Action
from audit.models import Outcome as AuditOutcome
from batches import access
from batches.history import batch_history
from batches.models import Batch
from batches.views.common import visible_batch_connection
from results import exports
from results.models import Outcome, ResultArchive, ResultFilter
from results.rows import export_rows, request_row, table_page
from sharing.forms import ShareLinkForm
from sharing.models import ShareLink, TooManyLinks

# Metadata keys batchboard writes itself name other batches (a retry's parent, its job): a reader sees the rest.
OWN_METADATA_PREFIX = "batchboard_"
SWITCHED_OFF = "Share links are switched off on this dashboard."


def _read_only(view):
    """Every answer under /shared/: not indexed, not cached, no Referer sent from it (the address is the secret),
    and kept out of django.request's "Not Found: <path>" warnings, which would log the token."""

    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        response["X-Robots-Tag"] = "noindex, nofollow"
        response["Referrer-Policy"] = "no-referrer"
        add_never_cache_headers(response)
        response._has_been_logged = True
        return response

    return login_not_required(require_safe(wrapped))


def _plain(request, status: int, title: str, message: str):
    return render(request, "sharing/plain.html", {"title": title, "message": message}, status=status)


def _not_found(request):
    return _plain(request, 404, "Not found", "This link does not open anything. Check that it was copied in full.")


def _open(request, token: str, what: str, needs: str = ""):
    """(link, None) for a working link that opens `what` (`needs` "results" or "exports" what the link must
    allow), its opening audited; else (None, the plain answer).

    An unknown token (404), an ended link (410) and a link switched off (404) answer with the same page whatever
    the batch: none names it or tells whether it exists."""
    if not settings.BATCHBOARD_PUBLIC_LINKS:
        return None, _plain(request, 404, "Switched off", SWITCHED_OFF)
    link = ShareLink.objects.by_token(token)
    if link is None:
        return None, _not_found(request)
    if not link.works():
        return None, _plain(request, 410, "Link ended", "This link has expired or was revoked. Ask for a new one.")
    allowed = {"": True, "results": link.allow_results, "exports": link.allow_exports}[needs]
    outcome = AuditOutcome.OK if allowed else AuditOutcome.REFUSED
    batch_id = link.batch.batch_id
    record(
        request,
        Action.SHARE_OPEN,
        outcome,
        batch_id=batch_id,
        target=what,
        username=link.audit_name,
        connection=link.batch.connection_id,
    )
    if not allowed:
        return None, _not_found(request)
    return link, None


def _shared_metadata(batch: Batch) -> list[tuple[str, str]]:
    return [(key, value) for key, value in batch.metadata_pairs if not key.startswith(OWN_METADATA_PREFIX)]


def _files(batch: Batch) -> list[tuple[str, str]]:
    kinds = (("Input", batch.input_file_id), ("Output", batch.output_file_id), ("Errors", batch.error_file_id))
    return [(label, file_id) for label, file_id in kinds if file_id]


def _ready_archive(batch: Batch) -> ResultArchive | None:
    """The batch's kept results, only if indexed: a reader never starts fetching them."""
    archive = ResultArchive.objects.filter(batch=batch).first()
    if archive is None or not archive.is_ready:
        return None
    archive.batch = batch
    return archive


def _row_links(token: str):
    """A row's position -> its page under the link: the reader's own addresses, never the dashboard's."""
    row_url = reverse("sharing:results", args=[token]) + "rows/"
    return lambda position: f"{row_url}{position}/"


@_read_only
def shared_batch(request, token):
    link, refused = _open(request, token, "batch page")
    if refused:
        return refused
    batch = link.batch
    context = {
        "link": link,
        "token": token,
        "batch": batch,
        "api": batch.api,
        "files": _files(batch),
        "metadata": _shared_metadata(batch),
        "history": batch_history(batch),
    }
    return render(request, "sharing/batch.html", context)


@_read_only
def shared_results(request, token):
    link, refused = _open(request, token, "results", needs="results")
    if refused:
        return refused
    batch = link.batch
    archive = _ready_archive(batch)
    result_filter = ResultFilter.from_query(request.GET)
    page = None
    if archive is not None:
        page = table_page(archive, result_filter, request.GET.get("page"), link=_row_links(token))
    context = {
        "link": link,
        "token": token,
        "batch": batch,
        "archive": archive,
        "filter": result_filter,
        "outcomes": Outcome,
        "page": page,
    }
    return render(request, "sharing/results.html", context)


@_read_only
def shared_row(request, token, position):
    link, refused = _open(request, token, f"results row {position}", needs="results")
    if refused:
        return refused
    archive = _ready_archive(link.batch)
    if archive is None:
        return _not_found(request)
    result_filter = ResultFilter.from_query(request.GET)
    shown = request_row(archive, position, result_filter, _row_links(token), raw_links=False)
    if shown is None:
        return _not_found(request)
    context = {**shown, "link": link, "token": token, "batch": link.batch, "filter": result_filter}
    return render(request, "sharing/row.html", context)


@_read_only
def shared_export(request, token, fmt):
    link, refused = _open(request, token, f"results export as {fmt}", needs="exports")
    if refused:
        return refused
    archive = _ready_archive(link.batch)
    if archive is None:
        return _not_found(request)
    result_filter = ResultFilter.from_query(request.GET)
    lines = archive.lines.matching(result_filter).in_order()
    return exports.download(export_rows(archive, lines, fmt), fmt, f"{link.batch.batch_id}-results.{fmt}")


@_read_only
def not_shared(request, rest):
    """Anything else under /shared/ (a token followed by another path, `..`, a batch id): nothing, the same way."""
    if not settings.BATCHBOARD_PUBLIC_LINKS:
        return _plain(request, 404, "Switched off", SWITCHED_OFF)
    return _not_found(request)


def _detail(batch_id: str) -> str:
    return reverse("batches:detail", args=[batch_id]) + "#share-links"


@require_POST
def make_link(request, batch_id):
    """Make a link for the batch and show its address once, on this answer: only its hash is kept."""
    connection = visible_batch_connection(request, batch_id)  # a batch the user may not see is a 404
    batch = Batch.objects.filter(connection=connection, batch_id=batch_id).first()
    if batch is None:
        raise Http404(f"There is no batch {batch_id}.")
    if not settings.BATCHBOARD_PUBLIC_LINKS:
        record(request, Action.SHARE_CREATE, AuditOutcome.REFUSED, batch_id=batch_id, detail=SWITCHED_OFF)
        return render(request, "sharing/made.html", {"batch": batch, "error": SWITCHED_OFF}, status=403)
    form = ShareLinkForm(request.POST, auto_id="share-%s")
    if not form.is_valid():
        return render(request, "sharing/made.html", {"batch": batch, "form": form}, status=400)
    try:
        link, token = ShareLink.make(
            batch,
            request.user,
            lifetime=form.lifetime,
            name=form.cleaned_data["name"],
            allow_results=form.cleaned_data["allow_results"],
            allow_exports=form.cleaned_data["allow_exports"],
        )
    except TooManyLinks as exc:
        record(request, Action.SHARE_CREATE, AuditOutcome.REFUSED, batch_id=batch_id, detail=str(exc))
        return render(request, "sharing/made.html", {"batch": batch, "error": str(exc)}, status=429)
    opens = "its page" + (", its results" if link.allow_results else "") + (", exports" if link.allow_exports else "")
    detail = f"opens {opens} until {link.expires_at:%Y-%m-%d %H:%M} UTC"
    record(request, Action.SHARE_CREATE, AuditOutcome.OK, batch_id=batch_id, target=link.label, detail=detail)
    share_url = request.build_absolute_uri(reverse("sharing:batch", args=[token]))
    context = {"batch": batch, "link": link, "share_url": share_url}
    response = render(request, "sharing/made.html", context, status=201)
    response["Referrer-Policy"] = "no-referrer"
    return response


@require_POST
def revoke_link(request, batch_id, pk):
    visible = ShareLink.objects.select_related("batch").filter(batch__connection__in=access.connections(request.user))
    link = get_object_or_404(visible, pk=pk, batch__batch_id=batch_id)
    if not link.may_be_revoked_by(request.user):
        record(request, Action.SHARE_REVOKE, AuditOutcome.REFUSED, batch_id=batch_id, target=link.label)
        return render(
            request,
            "sharing/made.html",
            {"batch": link.batch, "error": "Only the link's maker, or a user who may cancel batches, may revoke it."},
            status=403,
        )
    ended = link.revoke(request.user)
    outcome = AuditOutcome.OK if ended else AuditOutcome.ALREADY
    record(request, Action.SHARE_REVOKE, outcome, batch_id=batch_id, target=link.label)
    if ended:
        messages.success(request, f"The share link {link.label} is revoked: it no longer opens anything.")
    else:
        messages.info(request, f"The share link {link.label} had already ended.")
    return redirect(_detail(batch_id))
