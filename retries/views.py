"""Retrying lines of a batch (choose, confirm, create) and the final results of a job across its retries."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from audit.log import record
from audit.models import Action
from audit.models import Outcome as AuditOutcome
from batches import access, services
from batches.models import Batch
from batches.views.common import existing_batch_connection, refreshed_batch, unreachable
from results import exports
from results.archive import StoredFiles, request_archive
from results.models import Outcome, ResultLine
from retries import cancel, confirm, merged, submit
from retries.selection import CHOICES, RetrySelection

CSV_COLUMNS = ["line", "custom_id", "outcome", "status", "error_code", "error_message", "tokens", "answer", "batch"]


def _choices(archive) -> list[tuple[str, str, int]]:
    """(choice, label, lines) for the chooser: one aggregate over the archive's input lines."""
    aggregate = (
        ResultLine.objects.filter(archive=archive)
        .input_lines()
        .aggregate(**{choice: Count("pk", filter=condition) for choice, (_label, condition) in CHOICES.items()})
    )
    return [(choice, label, aggregate[choice]) for choice, (label, _condition) in CHOICES.items()]


@require_http_methods(["GET", "HEAD", "POST"])
def retry_confirm(request, batch_id):
    connection = existing_batch_connection(request, batch_id)  # a batch the user may not see is a 404
    if not access.may(request.user, access.CREATE, connection):
        if request.method == "POST":
            confirm.audit_refused(request, batch_id)
        raise PermissionDenied("You may not create batches on this connection, so you may not retry lines either.")
    parent, freshness = refreshed_batch(request, batch_id)
    if parent is None:
        return unreachable(request, batch_id, freshness)
    archive = request_archive(parent)
    context = {"batch": parent, "archive": archive, "completion_windows": services.COMPLETION_WINDOWS}
    if archive is None or not archive.is_ready:
        return render(request, "retries/confirm.html", context, status=409 if request.method == "POST" else 200)
    data = request.POST if request.method == "POST" else request.GET
    selection = RetrySelection.from_query(data)
    if selection is None:
        context["choices"] = _choices(archive)
        context["invalid_selection"] = "select" in data
        return render(request, "retries/confirm.html", context, status=400 if request.method == "POST" else 200)
    options, problems = confirm.options_of(data)
    token = data.get("token") if request.method == "POST" else str(uuid.uuid4())
    prepared = submit.prepare(parent, archive, selection, token=token, **options)
    context.update(selection=selection, prepared=prepared, options=options, problems=problems)
    if request.method != "POST":
        return render(request, "retries/confirm.html", context)
    sent = confirm.send(request, prepared, selection, problems)
    if sent.refused:
        return render(request, "retries/confirm.html", context, status=400)
    outcome = sent.outcome
    if outcome.batch is None:
        context["create_error"] = outcome.error
        return render(request, "retries/confirm.html", context, status=502)
    new_id = outcome.batch.batch_id
    if outcome.repeated:
        messages.info(request, f"This retry was already submitted: it created {new_id}.")
    else:
        messages.success(request, f"Batch {new_id} created: a retry of {prepared.lines:,} lines of {parent.batch_id}.")
    response = redirect("batches:detail", batch_id=new_id)
    response.status_code = 303
    return response


def _job(request, batch_id):
    batch, freshness = refreshed_batch(request, batch_id)
    if batch is None:
        return None, None, freshness
    return batch, merged.job_of(batch), freshness


@require_safe
def final_results(request, batch_id):
    batch, job, freshness = _job(request, batch_id)
    if batch is None:
        return unreachable(request, batch_id, freshness)
    show = merged.show_of(request.GET)
    context = {"batch": batch, "job": job, "show": show}
    if job.is_split:
        context["split"] = _split_summary(request, job)
    if job.root_archive is not None:
        counts = merged.counts(job)
        total = counts.total if show == merged.SHOW_ALL else counts.failing_total
        context.update(counts=counts, page=merged.page(job, show, request.GET.get("page"), total=total))
    return render(request, "retries/final.html", context)


def _split_summary(request, job) -> dict:
    """The job page's parts card: each part with its progress, the whole file's progress, the job's cost (every
    part and every retry of one) and whether the viewer may cancel its running batches."""
    total, completed, failed = job.request_counts
    running = job.running
    return {
        "parts": job.parts,
        "count": job.part_count,
        "missing": job.part_count - len(job.parts),
        "requests": total,
        "processed": completed + failed,
        "percent": round(100 * (completed + failed) / total) if total else 0,
        "cost": job.cost_total(),
        "running": running,
        "can_cancel": bool(running) and access.may(request.user, access.CANCEL, job.parts[0].connection_id),
    }


@require_POST
def cancel_job(request, batch_id):
    """Cancel every running batch of the batch's job (a split file's parts and their retries, or a batch and its
    retries): one POST, each cancel audited, the outcome of each reported. A batch on a connection the viewer cannot
    see is a 404, as any batch; one they may not cancel on a 403."""
    connection = existing_batch_connection(request, batch_id)
    if not access.may(request.user, access.CANCEL, connection):
        record(request, Action.CANCEL, AuditOutcome.REFUSED, batch_id=batch_id, detail="no permission to cancel job")
        raise PermissionDenied("You may not cancel batches of this connection.")
    job = merged.job_of(Batch.objects.get(connection=connection, batch_id=batch_id))
    outcomes = cancel.cancel_running(request, job, connection)
    problems = [f"{member}: {outcome.error}" for member, outcome in outcomes if outcome.error]
    if problems:
        messages.error(request, f"Cancelled {len(outcomes) - len(problems)} of {len(outcomes)}. " + " ".join(problems))
    elif outcomes:
        messages.success(request, f"Cancel asked for {len(outcomes)} running batch{'es' if len(outcomes) > 1 else ''}.")
    else:
        messages.info(request, "Nothing of this job is running: nothing was cancelled.")
    response = redirect("retries:final", batch_id=job.job_id)
    response.status_code = 303
    return response


@require_safe
def final_export(request, batch_id, fmt):
    batch, job, freshness = _job(request, batch_id)
    if batch is None:
        return unreachable(request, batch_id, freshness)
    if job.root_archive is None:
        return redirect("retries:final", batch_id=batch.batch_id)
    return export_download(request, batch, job, fmt)


def export_download(request, batch, job, fmt: str):
    """The job's final results as CSV or JSONL (`show` from the query), streamed and audited: the one path of the
    page's exports and the JSON API's."""
    show = merged.show_of(request.GET)
    target = f"final results of {job.job_id} as {fmt}" + (" (still failing)" if show == merged.SHOW_FAILING else "")
    record(request, Action.DOWNLOAD, AuditOutcome.OK, batch_id=job.job_id, target=target)
    rows = exports.csv_lines(CSV_COLUMNS, _csv_rows(job, show)) if fmt == "csv" else _jsonl_rows(job, show)
    return exports.download(rows, fmt, f"{batch.download_stem(job.job_id)}-final.{fmt}")


class _Files:
    """The stored files of every archive of the job, opened on first use."""

    def __init__(self, job):
        self.job = job
        self.open: dict[int, StoredFiles] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        for files in self.open.values():
            files.__exit__(*exc_info)

    def of(self, archive_id: int) -> StoredFiles:
        if archive_id not in self.open:
            archive = next(archive for archive in self.job.archives.values() if archive.pk == archive_id)
            self.open[archive_id] = StoredFiles(archive)
        return self.open[archive_id]


def _csv_rows(job, show):
    """The CSV_COLUMNS of each original line, from its best line in the job."""
    with _Files(job) as files:
        for row in merged.iter_rows(job, show):
            line = row.best or row.original
            text = ""
            if line.outcome == Outcome.SUCCEEDED:
                text = exports.answer_of(files.of(line.archive_id).result_record(line))
            tokens = line.total_tokens if line.total_tokens is not None else ""
            batch_id = row.batch.batch_id if row.batch else ""
            yield [
                row.line_number,
                line.custom_id,
                line.outcome,
                line.status_code or "",
                line.error_code,
                line.error_message,
                tokens,
                text,
                batch_id,
            ]


def _jsonl_rows(job, show):
    """Each line: the original line's place, the final outcome and the batch that gave it, then the original input
    line and the chosen result line exactly as stored (null if none)."""
    with _Files(job) as files:
        for row in merged.iter_rows(job, show):
            line = row.best or row.original
            head = {
                "line": row.line_number,
                "custom_id": row.original.custom_id,
                "outcome": line.outcome,
                "batch": row.batch.batch_id if row.batch else None,
            }
            yield exports.jsonl_line(
                head,
                files.of(row.original.archive_id).input_bytes(row.original),
                files.of(line.archive_id).result_bytes(line),
            )
