"""The sandbox's operations on stored state: files on disk, batch creation and cancel, lazily written result files.

Result files are written when a batch is first seen terminal (a retrieve, a list, a cancel, or a file listing),
dated at the moment it became terminal, so what a client sees never depends on when it looked.
Choices where the reference is silent: a cancel of a terminal batch is a 409 with `x-should-retry: false`; a cancel
of a batch already cancelling answers it unchanged; files are listed and batches paged newest first with the id
breaking ties; an expired or deleted file answers 404, but a batch still running keeps its deleted input's bytes.

Storage is bounded (settings, in docs/configuration.md): every file, uploaded or generated, expires after at most
SANDBOX_FILE_MAX_AGE (so a file the API would keep until deleted shows that expiry), expired and deleted files are
removed from disk at the next upload, and an upload that would take the files past SANDBOX_STORAGE_QUOTA is refused
with a 400 (the reference documents a 2.5 TB project limit but not its error; code and wording are the sandbox's).
Result files are always written, even past the quota: they only make the next upload wait for room.

Every function that finds objects by id or lists them takes the organisation asking (sandbox/organisations.py) and
sees only its objects; storage (quota, purging) is shared, as the files share one folder.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Q, Sum

from sandbox import organisations, results
from sandbox.api import ApiError
from sandbox.models import SandboxBatch, SandboxFile
from sandbox.rules import FILE_RETENTION_S
from sandbox.simulation import State, final_moment, final_status, real_time, state_at
from sandbox.simulation import durations as simulated_durations
from sandbox.validation import iter_requests, scan_input

logger = logging.getLogger(__name__)

PURGE_CHUNK = 500
RESULT_SHUFFLE_WINDOW = 16  # results come back roughly, not exactly, in input order
SCENARIO_KEY = "sandbox_scenario"
SCENARIOS = ("expire", "slow", "all_fail", "token_limit")
TOKEN_LIMIT_ERROR = {
    "code": "token_limit_exceeded",
    "message": "Enqueued token limit reached for {model} in organization {organisation}. Limit: 2,000,000 enqueued "
    "tokens. Please try again once some in_progress batches have been completed.",
    "param": None,
    "line": None,
}


def files_dir() -> Path:
    path = Path(settings.SANDBOX_FILES_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- Files ------------------------------------------------------------------


def _expiry(created_at: int, expires_after: int | None) -> int:
    """When a file expires: after `expires_after` seconds, or the sandbox's longest file lifetime, the sooner."""
    return created_at + min(expires_after or settings.SANDBOX_FILE_MAX_AGE, settings.SANDBOX_FILE_MAX_AGE)


def storage_used() -> int:
    """Bytes on disk: every file row left holds its bytes (purge_expired removes the others)."""
    return SandboxFile.objects.aggregate(used=Sum("bytes"))["used"] or 0


def over_quota(used: int) -> ApiError:
    quota = settings.SANDBOX_STORAGE_QUOTA
    return ApiError(
        400,
        f"This upload would exceed the sandbox's storage quota of {quota:,} bytes ({used:,} bytes are in use). "
        "Delete files you no longer need, or raise SANDBOX_STORAGE_QUOTA_MB.",
        param="file",
        code="storage_quota_exceeded",
    )


def purge_expired(now: float) -> None:
    """Remove the rows and bytes of expired and deleted files, except inputs an unfinished batch still reads."""
    gone = SandboxFile.objects.filter(Q(expires_at__lte=now) | Q(deleted=True)).exclude(
        pk__in=SandboxBatch.objects.filter(results_ready=False).values("input_file_id")
    )
    while file_ids := list(gone.values_list("pk", flat=True)[:PURGE_CHUNK]):
        for file_id in file_ids:
            (files_dir() / file_id).unlink(missing_ok=True)
        SandboxFile.objects.filter(pk__in=file_ids).delete()


def store_file(
    temp_path: Path,
    *,
    filename: str,
    purpose: str,
    now: float,
    expires_after: int | None,
    organisation: str = organisations.FIRST,
) -> SandboxFile:
    """Adopt an uploaded file already streamed to disk (in the files folder, so the move is a rename), for the
    organisation that uploaded it (benchmarks that store files directly leave it to the first).

    The quota was checked while the file streamed in; it is checked again here, since uploads running at the same
    time each saw the room left before the others took it.
    """
    size = temp_path.stat().st_size
    used = storage_used()
    if used + size > settings.SANDBOX_STORAGE_QUOTA:
        raise over_quota(used)
    file_id = organisations.new_file_id(organisation)
    target = files_dir() / file_id
    os.replace(temp_path, target)
    created_at = int(now)
    if expires_after is None and purpose == "batch":
        expires_after = FILE_RETENTION_S
    return SandboxFile.objects.create(
        id=file_id,
        organisation=organisation,
        filename=filename,
        purpose=purpose,
        bytes=size,
        created_at=created_at,
        expires_at=_expiry(created_at, expires_after),
    )


def _live_files(now: float, organisation: str):
    return SandboxFile.objects.filter(organisation=organisation, deleted=False).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now)
    )


def get_file(file_id: str, now: float, organisation: str) -> SandboxFile:
    # A result file gets its id when it is written, so no client can ask for one that is not written yet.
    file = _live_files(now, organisation).filter(pk=file_id).first()
    if file is None:
        raise ApiError(404, f"No such File object: {file_id}", param="id")
    return file


def batch_input_file(file_id: str, now: float, organisation: str) -> SandboxFile:
    """The file a new batch reads, or the 400 the API answers for an unknown or unsuitable one."""
    file = _live_files(now, organisation).filter(pk=file_id).first()
    if file is None or not file.path.exists():
        raise ApiError(400, f"Invalid 'input_file_id': no file with id '{file_id}' exists.", param="input_file_id")
    if file.purpose != "batch":
        raise ApiError(
            400,
            f"Invalid 'input_file_id': file '{file_id}' has purpose '{file.purpose}'; a batch needs a file uploaded "
            "with purpose 'batch'.",
            param="input_file_id",
        )
    return file


def list_files(*, now: float, organisation: str, purpose: str | None, limit: int, order: str, after: str | None):
    materialize_due(now, organisation)
    files = _live_files(now, organisation)
    if purpose:
        files = files.filter(purpose=purpose)
    descending = order == "desc"
    files = files.order_by(*(["-created_at", "-id"] if descending else ["created_at", "id"]))
    if after:
        cursor = SandboxFile.objects.filter(pk=after, organisation=organisation).first()
        if cursor is None:
            return [], False
        if descending:
            files = files.filter(
                Q(created_at__lt=cursor.created_at) | Q(created_at=cursor.created_at, id__lt=cursor.id)
            )
        else:
            files = files.filter(
                Q(created_at__gt=cursor.created_at) | Q(created_at=cursor.created_at, id__gt=cursor.id)
            )
    page = list(files[: limit + 1])
    return page[:limit], len(page) > limit


def delete_file(file_id: str, now: float, organisation: str) -> None:
    file = get_file(file_id, now, organisation)
    SandboxFile.objects.filter(pk=file.pk).update(deleted=True)
    _discard_if_unneeded(file.id)


def _discard_if_unneeded(file_id: str) -> None:
    """Remove a deleted file's bytes, unless an unfinished batch still has to read them to write its results."""
    if (
        SandboxFile.objects.filter(pk=file_id, deleted=True).exists()
        and not SandboxBatch.objects.filter(input_file_id=file_id, results_ready=False).exists()
    ):
        (files_dir() / file_id).unlink(missing_ok=True)


# --- Batches ----------------------------------------------------------------


def create_batch(
    *,
    input_file: SandboxFile,
    endpoint: str,
    metadata: dict | None,
    output_expires_after: int | None,
    now: float,
    speed: float,
    durations: dict | None = None,
    scenario: str = "",
) -> SandboxBatch:
    """Validate the input now (the simulated `validating` phase only shows it) and store the batch's plan.

    `durations` overrides the simulated phase durations (the demo seed uses it); otherwise they come from
    simulation.durations. `scenario` steers demos and tests: "expire", "slow", "all_fail" or "token_limit".
    The batch belongs to its input file's organisation.
    """
    scenario = scenario if scenario in SCENARIOS else ""
    organisation = input_file.organisation
    batch_id = organisations.new_batch_id(organisation, now)
    scan = scan_input(
        input_file.path, endpoint, attempt=results.attempt_of(metadata), force_failure=scenario == "all_fail"
    )
    errors = scan.errors
    if scenario == "token_limit" and not errors:
        message = TOKEN_LIMIT_ERROR["message"].format(model=scan.model, organisation=organisation)
        errors = [{**TOKEN_LIMIT_ERROR, "message": message}]
    plan_durations = durations or simulated_durations(batch_id, scan.total, scenario)
    batch = SandboxBatch(
        id=batch_id,
        organisation=organisation,
        endpoint=endpoint,
        input_file_id=input_file.id,
        metadata=metadata,
        output_expires_after=output_expires_after,
        scenario=scenario,
        created=now,
        created_at=int(now),
        speed=speed,
        total=0 if errors else scan.total,
        model=scan.model or "",
        errors=errors,
        checkpoints=[] if errors else scan.checkpoints,
        **plan_durations,
    )
    batch.webhook_due_at = final_moment(batch.plan)
    batch.save(force_insert=True)
    return batch


def get_batch(batch_id: str, organisation: str, *, for_update: bool = False) -> SandboxBatch:
    batches = SandboxBatch.objects.select_for_update() if for_update else SandboxBatch.objects
    batch = batches.filter(pk=batch_id, organisation=organisation).first()
    if batch is None:
        raise ApiError(404, f"No batch found with id '{batch_id}'.")
    return batch


def observe(batch: SandboxBatch, now: float) -> tuple[SandboxBatch, State]:
    """The batch's state at `now`, writing its result files first if it has just become terminal."""
    state = state_at(batch.plan, now)
    if state.is_terminal and not batch.results_ready:
        return _materialize(batch, state, now)
    return batch, state


def list_batches(*, now: float, organisation: str, limit: int, after: str | None):
    """Newest first by created_at, the id breaking ties; `after` is the id of the last batch of the previous page."""
    batches = SandboxBatch.objects.filter(organisation=organisation).order_by("-created_at", "-id")
    if after:
        cursor = batches.filter(pk=after).first()
        if cursor is None:
            return [], False
        # Not an OR of the two conditions: SQLite then sorts every older batch (1.7 s at 100,000); this form reads the
        # created_at index from the cursor down and sorts only ties (15 ms).
        batches = batches.filter(created_at__lte=cursor.created_at).exclude(
            created_at=cursor.created_at, id__gte=cursor.id
        )
    page = list(batches[: limit + 1])
    return [observe(batch, now) for batch in page[:limit]], len(page) > limit


def cancel_batch(batch_id: str, now: float, organisation: str) -> tuple[SandboxBatch, State]:
    with transaction.atomic():
        batch = get_batch(batch_id, organisation, for_update=True)
        state = state_at(batch.plan, now)
        if state.is_terminal or batch.results_ready:
            # results_ready while `state` still runs: a request that came in a moment later saw the batch finish.
            status = state.status if state.is_terminal else final_status(batch.plan)
            # 409 follows a third-party emulator of OpenAI (unverified upstream, REFERENCE §2.9); the header stops
            # the SDK, which retries 409s by default, from asking again.
            raise ApiError(409, f"Cannot cancel a batch with status '{status}'.", headers={"x-should-retry": "false"})
        if batch.cancel_requested is None:  # only the first request counts, however many arrive at once
            batch.cancel_requested = now
            if batch.webhook_due_at is not None:
                batch.webhook_due_at = final_moment(batch.plan)
            batch.save(update_fields=["cancel_requested", "webhook_due_at"])
    return observe(batch, now)


def materialize_due(now: float, organisation: str) -> None:
    """Write the result files of the organisation's batches that have become terminal unseen, so its file listings
    include them."""
    for batch in SandboxBatch.objects.filter(organisation=organisation, results_ready=False):
        observe(batch, now)


# --- Result files -----------------------------------------------------------


def _materialize(batch: SandboxBatch, state: State, now: float) -> tuple[SandboxBatch, State]:
    """Write the batch's result files, then adopt them unless another request did first or a cancel came between.

    The files are written before the transaction: a large batch takes seconds, and a write lock held that long
    would stall every other request (on SQLite, every write of the whole project). Concurrent requests may each
    write the files; the first to adopt them wins and the others discard theirs.
    """
    written = _write_result_files(batch, state)
    try:
        with transaction.atomic():
            locked = get_batch(batch.pk, batch.organisation, for_update=True)
            if not locked.results_ready and locked.cancel_requested == batch.cancel_requested:
                file_ids = {
                    kind: _adopt_result(locked, path, kind, state.terminal_at) for kind, path in written.items()
                }
                locked.output_file_id = file_ids.get("output", "")
                locked.error_file_id = file_ids.get("error", "")
                locked.results_ready = True
                locked.save(update_fields=["results_ready", "output_file_id", "error_file_id"])
    finally:
        for path in written.values():
            path.unlink(missing_ok=True)  # whatever was not adopted
    if not locked.results_ready:
        return observe(locked, now)  # a cancel changed the plan meanwhile: start again from the new one
    _discard_if_unneeded(locked.input_file_id)
    return locked, state_at(locked.plan, now)


def _result_records(batch: SandboxBatch, state: State):
    """(kind, line) for every request of a terminal batch, roughly in the order the work finished."""
    plan = batch.plan
    attempt = results.attempt_of(batch.metadata)
    window = []
    for index, line in enumerate(iter_requests(files_dir() / batch.input_file_id)):
        if index < state.lines_done:
            finished = plan.validate_s + plan.run_s * (index + 1) / plan.total
            created = min(real_time(plan, finished), state.terminal_at)
            outcome = results.line_outcome(
                batch.endpoint,
                line["custom_id"],
                line["body"],
                attempt=attempt,
                force_failure=batch.scenario == "all_fail",
            )
            record = results.result_line(batch.id, batch.endpoint, line, outcome, created)
            kind = "output" if outcome.succeeded else "error"
        else:
            record = results.result_line(
                batch.id, batch.endpoint, line, None, state.terminal_at, unrun_code=state.unrun_code
            )
            kind = "error"
        if not results.dropped(batch.id, line["custom_id"], settings.SANDBOX_DROP_RATE):
            window.append((kind, record))
        if len(window) >= RESULT_SHUFFLE_WINDOW:
            yield from _shuffled(window)
            window = []
    yield from _shuffled(window)


def _shuffled(window):
    # Workers finish out of order: each small window comes out sorted by the hash part of the line ids.
    return sorted(window, key=lambda item: item[1]["id"][-24:])


def _write_result_files(batch: SandboxBatch, state: State) -> dict[str, Path]:
    """Temporary "output" and "error" files, each only if it got a line; none for a failed or empty batch."""
    if state.status == "failed" or state.total == 0:
        return {}
    directory = files_dir()
    paths = {}
    written = Counter()
    complete = False
    try:
        with (
            tempfile.NamedTemporaryFile("w", dir=directory, prefix=".output-", delete=False, encoding="utf-8") as out,
            tempfile.NamedTemporaryFile("w", dir=directory, prefix=".errors-", delete=False, encoding="utf-8") as err,
        ):
            paths = {"output": Path(out.name), "error": Path(err.name)}
            handles = {"output": out, "error": err}
            for kind, record in _result_records(batch, state):
                handles[kind].write(json.dumps(record, ensure_ascii=False) + "\n")
                written[kind] += 1
        complete = True
    except FileNotFoundError:
        # The files folder was emptied under a surviving database: the batch ends without result files.
        logger.warning("Sandbox batch %s has lost its input file; no result files written.", batch.id)
    finally:
        for kind, path in paths.items():
            if not (complete and written[kind]):
                path.unlink(missing_ok=True)
    return {kind: path for kind, path in paths.items() if complete and written[kind]}


def _adopt_result(batch: SandboxBatch, temp_path: Path, kind: str, created_at: int) -> str:
    file_id = organisations.new_file_id(batch.organisation)
    target = files_dir() / file_id
    os.replace(temp_path, target)
    SandboxFile.objects.create(
        id=file_id,
        organisation=batch.organisation,
        filename=f"{batch.id}_{kind}.jsonl",
        purpose="batch_output",
        bytes=target.stat().st_size,
        created_at=created_at,
        expires_at=_expiry(created_at, batch.output_expires_after or FILE_RETENTION_S),
    )
    return file_id
