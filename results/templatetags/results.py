"""Small filters and the row tag of the results app's templates."""

from django import template
from django.utils.html import format_html

from results.models import Outcome

register = template.Library()

FILE_LABELS = {"input": "input", "o": "output", "e": "error"}


@register.filter
def get_count(counts, key):
    return (counts or {}).get(key, 0)


@register.filter
def file_label(code):
    return FILE_LABELS.get(code, code)


@register.simple_tag
def result_row(line, show_request=True):
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
    request = format_html('<td class="preview request-preview">{}</td>', line.prompt) if show_request else ""
    return format_html(
        '<tr><td class="num">{}</td><td class="mono"><a href="{}">{}</a>{}</td>{}'
        '<td><span class="outcome outcome-{}">{}</span>{}</td><td>{}<span class="error-message">{}</span></td>'
        '<td class="num">{}</td><td class="preview">{}</td></tr>',
        line.line_number or "—",
        line.url,
        line.custom_id,
        tags,
        request,
        line.outcome,
        line.outcome,
        status,
        code,
        message,
        "" if tokens is None else tokens,
        line.preview,
    )
