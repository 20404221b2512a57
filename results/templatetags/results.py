"""The results app on other pages: the detail page's notice, summary and link, and small filters for its templates."""

from django import template
from django.utils.html import format_html

from results.models import Outcome, ResultArchive

register = template.Library()

FILE_LABELS = {"input": "input", "o": "output", "e": "error"}


def _archive(batch) -> ResultArchive | None:
    """The batch's archive, looked up once per page however many tags ask."""
    if not hasattr(batch, "_results_archive"):
        batch._results_archive = ResultArchive.objects.filter(batch=batch).first()
    return batch._results_archive


@register.inclusion_tag("results/_detail_notice.html")
def results_notice(batch):
    """At the top of the detail page: a completed batch whose lines did not all succeed says so plainly."""
    archive = _archive(batch) if batch.is_terminal else None
    counts = archive.outcome_counts if archive is not None else {}
    failed = counts.get(Outcome.FAILED, 0) if counts else batch.failed_requests
    missing = counts.get(Outcome.MISSING, 0)
    return {
        "batch": batch,
        "show": batch.status == "completed" and bool(failed or missing),
        "failed": failed,
        "missing": missing,
        "total": batch.total_requests,
        "counted": bool(counts),
    }


@register.inclusion_tag("results/_detail_summary.html", takes_context=True)
def results_summary(context, batch):
    """The detail page's results card: the link to the results table and the errors grouped."""
    has_results = bool(batch.output_file_id or batch.error_file_id)
    return {
        "batch": batch,
        "can_retry": context["perms"]["batches"]["create_batch"] if "perms" in context else False,
        "archive": _archive(batch) if has_results else None,
        "has_results": has_results,
        "outcomes": Outcome,
    }


@register.filter
def get_count(counts, key):
    return (counts or {}).get(key, 0)


@register.filter
def file_label(code):
    return FILE_LABELS.get(code, code)


@register.simple_tag
def result_row(line):
    """One row of the results table. Built in Python: as a template it was most of the page's time (100 rows)."""
    tags = ""
    if line.duplicate:
        tags = format_html(' <span class="tag">{}</span>', "another answer")
    elif not line.line_number:
        tags = format_html(' <span class="tag">{}</span>', "not in the input")
    failed = line.outcome == Outcome.FAILED and line.status_code
    status = format_html(' <span class="mono">{}</span>', line.status_code) if failed else ""
    code = format_html("<code>{}</code> ", line.error_code) if line.error_code else ""
    message = line.error_message if len(line.error_message) <= 160 else line.error_message[:159] + "…"
    tokens = line.total_tokens
    return format_html(
        '<tr><td class="num">{}</td><td class="mono"><a href="{}">{}</a>{}</td>'
        '<td><span class="outcome outcome-{}">{}</span>{}</td><td>{}<span class="error-message">{}</span></td>'
        '<td class="num">{}</td><td class="preview">{}</td></tr>',
        line.line_number or "—",
        line.url,
        line.custom_id,
        tags,
        line.outcome,
        line.outcome,
        status,
        code,
        message,
        "" if tokens is None else tokens,
        line.preview,
    )
