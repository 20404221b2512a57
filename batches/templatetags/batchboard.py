"""Template helpers shared by the pages: status badges and progress bars (SVG, since the CSP forbids inline styles)."""

from django import template
from django.utils.html import format_html

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
    label = f"{completed:,} completed, {failed:,} failed of {total:,} requests"
    return format_html(
        '<svg class="progress" viewBox="0 0 100 8" preserveAspectRatio="none" role="img" aria-label="{}">'
        "<title>{}</title>"
        '<rect class="progress-track" x="0" y="0" width="100" height="8"></rect>'
        '<rect class="progress-completed" x="0" y="0" width="{}" height="8"></rect>'
        '<rect class="progress-failed" x="{}" y="0" width="{}" height="8"></rect>'
        "</svg>",
        label,
        label,
        done_width,
        done_width,
        failed_width,
    )
