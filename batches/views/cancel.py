"""Cancelling batches: one, with a confirmation step, or several at once."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods
from django_htmx.http import retarget, trigger_client_event

from batches import access, actions, events, services
from batches.models import Batch
from batches.views.common import existing_batch_connection, refreshed_batch, unreachable
from batches.views.listing import list_context, list_query_of

MAX_BULK = 100
AUDIT_OUTCOMES = {"cancelled": events.OK, "already": events.ALREADY, "error": events.ERROR}


@require_http_methods(["GET", "HEAD", "POST"])
def batch_cancel(request, batch_id):
    """GET (and HEAD) shows a confirm page (for browsers without JavaScript); only POST cancels."""
    connection = existing_batch_connection(request, batch_id)  # a batch the user may not see is a 404
    _require_cancel_permission(request, batch_id, connection)
    next_url = _safe_next(request.POST.get("next") or request.GET.get("next"))
    if request.method != "POST":
        return _confirm_page(request, batch_id, next_url)
    outcome = actions.cancel_batch(batch_id, user=request.user.get_username(), connection=connection)
    events.note_action(request, events.CANCEL, AUDIT_OUTCOMES[outcome.result], batch_id=batch_id, detail=outcome.error)
    if request.htmx:
        return _cancel_fragment(request, batch_id, outcome)
    _add_message(request, batch_id, outcome)
    if next_url:
        return redirect(next_url)
    return redirect("batches:detail", batch_id) if outcome.batch else redirect("batches:list")


@require_http_methods(["GET", "HEAD", "POST"])
def batch_bulk_cancel(request):
    """GET (or HEAD, or a POST without confirm=yes) lists the selection to confirm; POST with confirm=yes cancels."""
    _require_cancel_permission(request)
    data = request.POST if request.method == "POST" else request.GET
    next_url = _safe_next(data.get("next")) or reverse("batches:list")
    selections, problem = selected_ids(data.getlist("batch_id"), request.user)
    if request.method != "POST" or data.get("confirm") != "yes":
        return _bulk_confirm_page(request, selections, problem, next_url)
    results = [] if problem else cancel_selected(request, selections)
    audit_bulk(request, results, problem)
    context = {"done": True, "results": results, "bulk_error": problem, "tally": _tally(results), "next": next_url}
    if not request.htmx:
        return render(request, "batches/batch_bulk_cancel.html", context)
    html = render_to_string("batches/batch_bulk_cancel.html#bulk-result", context, request)
    table = list_context(
        list_query_of(request.htmx.current_url_abs_path),
        access.list_freshness_for(request.user),
        can_cancel=True,
        user=request.user,
    )
    table.update(oob=True, oob_table=True)
    html += render_to_string("batches/batch_list.html#batch-table", table, request)
    return HttpResponse(html)


def _cancellable(request):
    """The batches the user may cancel: those of the connections that grant them cancel."""
    return Batch.objects.filter(connection__in=access.connections(request.user, access.CANCEL))


def _parts(selection: str) -> tuple[str, str]:
    """(connection slug or "", batch id) of a selection: "batch_id", or "slug/batch_id" (neither may hold a "/")."""
    slug, _, batch_id = selection.rpartition("/")
    return slug, batch_id


def _found(request, selections: list[str]) -> tuple[dict[str, Batch], set[str]]:
    """The selected batches the user may cancel, by selection, and the selections that are a bare id naming a batch in
    more than one of their connections (possible with compatible providers): which one was meant is unknown. A
    selection that names its connection ("slug/batch_id", as the list's boxes do) is never ambiguous."""
    batch_ids = {_parts(selection)[1] for selection in selections}
    in_connections: dict[str, list[Batch]] = {}
    rows = _cancellable(request).filter(batch_id__in=batch_ids).select_related("connection")
    for batch in rows.defer("payload", "search_text"):
        in_connections.setdefault(batch.batch_id, []).append(batch)
    found: dict[str, Batch] = {}
    ambiguous = set()
    for selection in selections:
        slug, batch_id = _parts(selection)
        candidates = [batch for batch in in_connections.get(batch_id, []) if not slug or batch.connection.slug == slug]
        if len(candidates) > 1:
            ambiguous.add(selection)
        elif candidates:
            found[selection] = candidates[0]
    return found, ambiguous


def cancel_selected(request, selections: list[str]) -> list[tuple[str, actions.CancelOutcome]]:
    """Cancel each selected batch on its own connection: (its id, what happened), in order. An id the user may not
    cancel is reported as unknown, a bare id in several of their connections as such (its page asks which one)."""
    found, ambiguous = _found(request, selections)
    selected = list({(batch.connection_id, batch.batch_id): batch for batch in found.values()}.values())
    outcomes = actions.cancel_batches(selected, user=request.user.get_username())
    done = {
        (batch.connection_id, batch.batch_id): outcome for batch, (_id, outcome) in zip(selected, outcomes, strict=True)
    }
    unknown = actions.CancelOutcome(None, sent=False, error="There is no batch with this id that you may cancel.")
    twice = actions.CancelOutcome(
        None, sent=False, error="This id is a batch in more than one connection: cancel it from its page."
    )
    results = []
    for selection in selections:
        batch = found.get(selection)
        outcome = done[(batch.connection_id, batch.batch_id)] if batch else twice if selection in ambiguous else unknown
        results.append((_parts(selection)[1], outcome))
    return results


def _require_cancel_permission(request, batch_id: str = "", connection=None) -> None:
    """On the batch's connection, or (for the bulk page) on any connection."""
    # Checked here, not only in templates: an htmx or hand-made request never sees the page around the button.
    allowed = access.connections(request.user, access.CANCEL)
    if not (access.may(request.user, access.CANCEL, connection) if connection else allowed):
        if request.method == "POST":
            events.note_action(
                request, events.CANCEL, events.REFUSED, batch_id=batch_id, detail="no permission to cancel"
            )
        raise PermissionDenied("You do not have permission to cancel batches.")


def audit_bulk(request, results: list[tuple[str, actions.CancelOutcome]], problem: str) -> None:
    if problem:
        events.note_action(request, events.CANCEL, events.REFUSED, target="bulk", detail=problem)
    for batch_id, outcome in results:
        detail = f"bulk cancel of {len(results)}" + (f": {outcome.error}" if outcome.error else "")
        events.note_action(
            request,
            events.CANCEL,
            AUDIT_OUTCOMES[outcome.result],
            batch_id=batch_id,
            target="bulk",
            detail=detail,
            connection=outcome.batch.connection_id if outcome.batch is not None else None,
        )


def _safe_next(url: str | None) -> str:
    """`url` if it is a path on this site, else ""."""
    if url and url.startswith("/") and url_has_allowed_host_and_scheme(url, allowed_hosts=None):
        return url
    return ""


def _confirm_page(request, batch_id: str, next_url: str):
    batch, freshness = refreshed_batch(request, batch_id)
    if batch is None:
        return unreachable(request, batch_id, freshness)
    context = {
        "batch": batch,
        "freshness": freshness,
        "next": next_url,
        "back_url": next_url or reverse("batches:detail", args=[batch_id]),
    }
    return render(request, "batches/batch_cancel_confirm.html", context)


def _cancel_fragment(request, batch_id: str, outcome: actions.CancelOutcome) -> HttpResponse:
    """The htmx answer: the list's row when the row asked, else the cancel control (e.g. on the detail page)."""
    from_row = request.htmx.target == f"row-{batch_id}"
    if from_row and outcome.batch is not None:
        Batch.objects.count_retries([outcome.batch])
        list_url = reverse("batches:list")
        query = list_query_of(request.htmx.current_url_abs_path)
        context = {
            "batch": outcome.batch,
            "cancel_outcome": outcome if outcome.error else None,
            "can_cancel": True,
            "show_connections": access.sees_several(request.user),
            "list_url": f"{list_url}?{query.urlencode()}" if query else list_url,
            "list_now": None,  # the row's relative times as of now (the list passes the moment of its cache keys)
        }
        return render(request, "batches/batch_list.html#batch-row", context)
    batch = outcome.batch or Batch(batch_id=batch_id, status="")
    response = render(request, "batches/_cancel_button.html", {"batch": batch, "cancel_outcome": outcome})
    if from_row:
        retarget(response, f"#cancel-{batch_id}")
    # Live regions on the page (the detail panel) refresh at once instead of at their next tick.
    trigger_client_event(response, "batches-changed")
    return response


def _add_message(request, batch_id: str, outcome: actions.CancelOutcome) -> None:
    if outcome.error:
        messages.error(request, f"{batch_id} was not cancelled. {outcome.error}")
    elif outcome.sent:
        messages.success(
            request, f"Cancel requested for {batch_id}. Requests already running finish; the rest will not run."
        )
    else:
        messages.info(request, f"A cancel was already requested for {batch_id}.")


def selected_ids(values: list[str], user) -> tuple[list[str], str]:
    """The distinct selections, in order, each a batch id or "connection slug/batch id", and a problem to show
    instead of cancelling anything: a value that is no id, too many, or a connection `user` may not cancel on (a
    tampered box)."""
    selections = list(dict.fromkeys(v.strip() for v in values if v.strip()))
    if not selections:
        return [], "No batches were selected. Tick the boxes of the batches to cancel."
    invalid = [v for v in selections if not services.ANY_ID_PATTERN.fullmatch(_parts(v)[1])]
    if invalid:
        return [], f"“{invalid[0][:40]}” is not a batch id; nothing was cancelled."
    if len(selections) > MAX_BULK:
        return (
            [],
            f"{len(selections)} batches were selected; cancel at most {MAX_BULK} at a time. Nothing was cancelled.",
        )
    allowed = {connection.slug for connection in access.connections(user, access.CANCEL)}
    refused = [slug for slug, _id in map(_parts, selections) if slug and slug not in allowed]
    if refused:
        return [], f"“{refused[0][:50]}” is not a connection you may cancel batches on; nothing was cancelled."
    return selections, ""


def _bulk_confirm_page(request, selections: list[str], problem: str, next_url: str):
    found, ambiguous = _found(request, selections)  # a bare id in two connections is skipped, as cancelling it would be
    to_cancel: dict[int, Batch] = {}
    skipped = []  # (batch id, its batch or None, whether it is in two connections)
    for selection in selections:
        batch = found.get(selection)
        if batch is not None and batch.can_cancel_now:
            to_cancel.setdefault(batch.pk, batch)
        else:
            skipped.append((_parts(selection)[1], batch, selection in ambiguous))
    context = {"to_cancel": list(to_cancel.values()), "skipped": skipped, "bulk_error": problem, "next": next_url}
    return render(request, "batches/batch_bulk_cancel.html", context)


def _tally(results: list[tuple[str, actions.CancelOutcome]]) -> dict[str, int]:
    tally = {"cancelled": 0, "already": 0, "error": 0}
    for _batch_id, outcome in results:
        tally[outcome.result] += 1
    return tally
