"""What a notification says: the batch, its description, its connection, counts, cost, failure groups (error codes
and how many lines each) and a link to its page. Never an answer or a line of input: nothing here reads a result
line or a file."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.urls import reverse

from batches import services
from batches.models import Batch
from batches.pricing import format_money
from notifications import fanout
from notifications.models import Notification

DESCRIPTION_LENGTH = 200
FAILURE_GROUPS = 5


@dataclass(frozen=True)
class Message:
    event: str
    title: str
    lines: list[str]
    url: str
    data: dict = field(default_factory=dict)  # the signed webhook's `data`

    @property
    def body(self) -> str:
        return "\n".join([*self.lines, self.url] if self.url else self.lines)


def absolute(path: str) -> str:
    return settings.BATCHBOARD_BASE_URL.rstrip("/") + path


def batch_path(batch: Batch) -> str:
    """The batch's page, naming its connection unless it is the default one."""
    path = reverse("batches:detail", args=[batch.batch_id])
    return path if batch.connection.is_default else f"{path}?connection={batch.connection.slug}"


def batch_url(batch: Batch) -> str:
    return absolute(batch_path(batch))


def what_happened(event: str, batch: Batch | None) -> str:
    if event.startswith(fanout.FINISHED_PREFIX):
        return services.status_label(event.removeprefix(fanout.FINISHED_PREFIX))
    if event == fanout.FAILURES:
        return f"completed with {batch.failed_requests:,} of {batch.total_requests:,} requests failed"
    if event.startswith(fanout.STUCK_PREFIX):
        return f"stuck in {event.removeprefix(fanout.STUCK_PREFIX)}"
    if event == fanout.EXPIRING:
        return "expiring soon"
    if event == fanout.JOB_COMPLETE:
        return "final results complete"
    if event.startswith(fanout.BUDGET_PREFIX):
        percent, _, month = event.removeprefix(fanout.BUDGET_PREFIX).partition(":")
        return f"monthly budget at {percent} % ({month})"
    return event


def failure_groups(batch: Batch) -> list[tuple[str, int]]:
    """(error code, lines) of a batch whose results were kept, else the codes of the API's own errors: codes only,
    never a message (it may quote the input)."""
    archive = getattr(batch, "result_archive", None)  # kept by the results app, when it was
    if archive is not None and archive.is_ready:
        return archive.code_counts[:FAILURE_GROUPS]
    codes: dict[str, int] = {}
    for error in batch.api.errors[:50]:
        code = str(error.code or "error")[:64]
        codes[code] = codes.get(code, 0) + 1
    return sorted(codes.items(), key=lambda pair: -pair[1])[:FAILURE_GROUPS]


def build(notification: Notification) -> Message:
    if notification.is_test:
        url = absolute(reverse("notifications:page"))
        lines = [f"A test from batchboard to {notification.destination.name}."]
        return Message(
            "test", "batchboard: test notification", lines, url, {"destination": notification.destination.name}
        )
    batch = notification.batch
    if batch is None:
        connection = notification.connection
        happened = what_happened(notification.event, None)
        url = absolute(reverse("batches:spending"))
        title = f"batchboard: {connection.name}: {happened}"
        return Message(
            notification.event,
            title,
            [f"Connection {connection.name}: {happened}."],
            url,
            {"connection": connection.slug, "event": notification.event},
        )
    happened = what_happened(notification.event, batch)
    if notification.event == fanout.JOB_COMPLETE:
        return _job_message(notification, batch)
    description = batch.description[:DESCRIPTION_LENGTH]
    title = f"batchboard: {batch.batch_id} {happened}"
    lines = [f"Batch {batch.batch_id} {happened}."]
    if description:
        lines.append(f"Description: {description}")
    lines.append(f"Connection: {batch.connection.name}")
    lines.append(
        f"Requests: {batch.total_requests:,} total, {batch.completed_requests:,} completed, "
        f"{batch.failed_requests:,} failed"
    )
    cost = batch.cost
    if cost is not None:
        lines.append(f"Cost: {format_money(cost)}")
    groups = failure_groups(batch)
    if groups:
        lines.append("Failures: " + ", ".join(f"{code}: {count:,} lines" for code, count in groups))
    url = batch_url(batch)
    data = {
        "id": batch.batch_id,
        "connection": batch.connection.slug,
        "status": batch.status,
        "description": description,
        "request_counts": {
            "total": batch.total_requests,
            "completed": batch.completed_requests,
            "failed": batch.failed_requests,
        },
        "cost": str(cost) if cost is not None else None,
        "failure_groups": [{"code": code, "count": count} for code, count in groups],
        "url": url,
    }
    return Message(notification.event, title, lines, url, data)


def _job_message(notification: Notification, original: Batch) -> Message:
    """A job's final results: how many of its lines succeeded, in how many batches, and what still fails (outcomes
    and counts only)."""
    from notifications.jobs import final_counts

    counts = final_counts(original)
    url = absolute(reverse("retries:final", args=[original.batch_id]))
    if not original.connection.is_default:
        url += f"?connection={original.connection.slug}"
    lines = [f"Job {original.batch_id}: final results complete, all retries done."]
    if original.description:
        lines.append(f"Description: {original.description[:DESCRIPTION_LENGTH]}")
    lines.append(f"Connection: {original.connection.name}")
    data = {"job": original.batch_id, "connection": original.connection.slug, "url": url}
    if counts is not None:
        lines.append(f"Lines: {counts.total:,}, {counts.succeeded:,} succeeded, {counts.failing_total:,} still failing")
        if counts.failing_pairs:
            lines.append("Still failing: " + ", ".join(f"{outcome}: {n:,}" for outcome, n in counts.failing_pairs))
        data["lines"] = {"total": counts.total, "succeeded": counts.succeeded, "failing": counts.failing_total}
    title = f"batchboard: job {original.batch_id} final results complete"
    return Message(notification.event, title, lines, url, data)


def digest(destination, notifications: list[Notification], total: int, *, held: bool = False) -> Message:
    """One message for several notifications: a line each for the first ones listed (what happened, to which batch,
    its link), then how many more; `held` when they waited for the destination to be resumed."""
    counted = f"{total} notification{'s' if total != 1 else ''}"
    heading = f"{counted} held while {destination.name} was paused:" if held else f"{counted} for {destination.name}:"
    lines = [heading]
    items = []
    for notification in notifications:
        batch = notification.batch
        happened = what_happened(notification.event, batch)
        if batch is not None:
            lines.append(f"- {batch.batch_id} {happened} ({batch.connection.name}): {batch_url(batch)}")
            items.append({"event": notification.event, "id": batch.batch_id, "url": batch_url(batch)})
        else:
            lines.append(f"- {notification.connection.name}: {happened}")
            items.append({"event": notification.event, "connection": notification.connection.slug})
    if total > len(notifications):
        lines.append(f"… and {total - len(notifications):,} more: see the delivery log.")
    title = f"batchboard: {counted}" + (" held while paused" if held else "")
    page = absolute(reverse("notifications:page"))
    return Message("digest", title, lines, page, {"notifications": items, "total": total, "held": held})
