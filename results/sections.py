"""The results app on the detail page (batches.sections): the notice of lines that did not succeed, and the results
card. The card may still change after the batch turned final, while its files are being fetched."""

from __future__ import annotations

from batches import access, sections
from results.archive import keeps_by_itself
from results.models import Outcome, ResultArchive


def _archive(batch) -> ResultArchive | None:
    """The batch's archive, looked up once per request however many sections ask."""
    if not hasattr(batch, "_results_archive"):
        batch._results_archive = ResultArchive.objects.filter(batch=batch).first()
    return batch._results_archive


def archive_key(archive: ResultArchive | None):
    """What of an archive the detail page shows: its summary is written once, with archived_at."""
    if archive is None:
        return None
    # str(): a state just created is the enum member, one read back from the database its value.
    return (str(archive.state), archive.problem, archive.archived_at, archive.pruned_at)


def notice_context(request, batch) -> dict:
    """At the top of the detail page: a completed batch whose lines did not all succeed says so plainly."""
    archive = _archive(batch) if batch.is_terminal else None
    counts = archive.outcome_counts if archive is not None else {}
    failed = counts.get(Outcome.FAILED, 0) if counts else batch.failed_requests
    missing = counts.get(Outcome.MISSING, 0)
    return {
        "show": batch.status == "completed" and bool(failed or missing),
        "failed": failed,
        "missing": missing,
        "total": batch.total_requests,
        "counted": bool(counts),
    }


def notice_key(context: dict):
    return (context["show"], context["failed"], context["missing"], context["total"], context["counted"])


def card_context(request, batch) -> dict:
    """The detail page's results card: the link to the results table and the errors grouped."""
    has_results = bool(batch.output_file_id or batch.error_file_id)
    archive = _archive(batch) if has_results else None
    return {
        "can_retry": access.may(request.user, access.CREATE, batch.connection_id),
        "archive": archive,
        "has_results": has_results,
        "outcomes": Outcome,
        # Asked for already, or about to be by the background work: the card fills in once the files are kept.
        "fetching": archive.is_pending if archive is not None else keeps_by_itself(batch),
    }


def card_key(context: dict):
    return (context["has_results"], context["can_retry"], context["fetching"], archive_key(context["archive"]))


def card_settled(context: dict) -> bool:
    return not context["fetching"]


NOTICE = sections.Section(
    name="results.notice",
    slot=sections.DETAIL_NOTICES,
    template="results/_detail_notice.html",
    context=notice_context,
    key=notice_key,
)
CARD = sections.Section(
    name="results.card",
    slot=sections.DETAIL_CARDS,
    template="results/_detail_summary.html",
    context=card_context,
    key=card_key,
    settled=card_settled,
)
