"""What users do to batches through the API: cancel (once, however many clicks) and create (once per form).

Each action claims its right to call upstream on a model first (BatchQuerySet.claim_cancel,
BatchCreationQuerySet.claim), so concurrent or repeated requests in any process send one call.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from batches import budget, services
from batches.freshness import failure_message
from batches.lineage_keys import part_metadata
from batches.lookups import refresh_batch
from batches.models import Batch, BatchCreation, Connection, record_batch, stored_username

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CancelOutcome:
    batch: Batch | None
    sent: bool  # an upstream cancel was sent by this call
    error: str = ""

    @property
    def result(self) -> str:
        """ "cancelled" (this call asked the API), "already" (someone already had), or "error"."""
        if self.error:
            return "error"
        return "cancelled" if self.sent else "already"


NOTHING_CANCELLED = "Nothing was cancelled."


def cancel_batch(
    batch_id: str,
    *,
    user: str = "",
    client: services.BatchClient | None = None,
    connection: Connection | None = None,
) -> CancelOutcome:
    """Cancel once, on the batch's connection (the default one when None): concurrent or repeated requests for the
    same batch result in a single upstream call.

    The claim is a conditional UPDATE of cancel_requested_at; a claim left by a request that died before reaching
    the API expires after CANCEL_CLAIM_SECONDS.
    """
    connection = connection or Connection.objects.default()
    row = Batch.objects.filter(connection=connection, batch_id=batch_id).first()
    if row is None:
        try:
            row, freshness = refresh_batch(batch_id, user_key=user, client=client, connection=connection)
        except services.NotFound:
            return CancelOutcome(None, sent=False, error="There is no batch with this id.")
        if row is None:
            return CancelOutcome(None, sent=False, error=f"{freshness.error_message} {NOTHING_CANCELLED}".strip())
    now = timezone.now()
    if not Batch.objects.claim_cancel(row.pk, user, now):
        row.refresh_from_db()
        if row.cancel_pending or row.status in ("cancelling", "cancelled"):
            return CancelOutcome(row, sent=False)
        return CancelOutcome(row, sent=False, error=_finished_message(row))
    try:
        batch = (client or services.get_client(services.CallFor.CANCEL, connection)).cancel_batch(batch_id)
    except services.BatchApiError as exc:
        # Release our own claim only: a call that outlived CANCEL_CLAIM_SECONDS may have been claimed over.
        Batch.objects.release_cancel(row.pk, now)
        logger.warning("Cancel of %s failed: %s", batch_id, exc)
        if isinstance(exc, services.BadRequest):
            # A 409: the batch finished after our cache last saw it. Record its real state so the page shows it.
            _refresh_quietly(batch_id, client, connection)
        row.refresh_from_db()
        return CancelOutcome(row, sent=False, error=_cancel_failure(exc, row))
    logger.info("Cancel of %s requested by %s", batch_id, user or "unknown user")
    return CancelOutcome(record_batch(batch, connection=connection), sent=True)


def cancel_batches(
    batches: list[Batch], *, user: str = "", client: services.BatchClient | None = None
) -> list[tuple[str, CancelOutcome]]:
    """Cancel each batch once, on its own connection, in the order given (duplicates ignored); one failure does not
    stop the others."""
    unique = {(batch.connection_id, batch.batch_id): batch for batch in batches}.values()
    return [
        (batch.batch_id, cancel_batch(batch.batch_id, user=user, client=client, connection=batch.connection))
        for batch in unique
    ]


def _finished_message(row: Batch) -> str:
    return f"This batch has already finished ({row.badge[1]}); there is nothing to cancel."


def _cancel_failure(exc: services.BatchApiError, row: Batch) -> str:
    if isinstance(exc, services.NotFound):
        return "The OpenAI API does not know this batch any more (deleted, or another project); nothing was cancelled."
    if isinstance(exc, services.BadRequest):
        if row.is_terminal:
            return _finished_message(row)
        return f"The OpenAI API refused to cancel this batch: {exc.message}"
    # After no answer (or a server error) nobody knows whether the cancel took effect; any other answer refused it.
    then = "The cancel may not have gone through." if isinstance(exc, services.Unavailable) else NOTHING_CANCELLED
    return failure_message(exc, then=then, retry="Try again in a moment.")


def _refresh_quietly(batch_id: str, client: services.BatchClient | None, connection: Connection) -> None:
    """After a refused cancel the batch has usually just finished: record its real state if we can."""
    with contextlib.suppress(services.BatchApiError):
        batch = (client or services.get_client(services.CallFor.CANCEL, connection)).retrieve_batch(batch_id)
        record_batch(batch, connection=connection)


# --- Creating a batch -------------------------------------------------------

# How long a repeated submission waits for the first one (a double click) to finish before saying it is still busy.
CREATE_WAIT_SECONDS = 30.0
NOTHING_CREATED = "Nothing was created."
CREATE_LIMITED = (
    "You have created or retried {limit} batches in the last minute, the most one person may. Nothing was sent to "
    "the OpenAI API; wait a minute and submit again."
)


@dataclass(frozen=True)
class CreateOutcome:
    """What a create submission did: a recorded batch, or an error for the form (and nothing half-done hidden)."""

    batch: Batch | None = None
    repeated: bool = False  # the token had created this batch already; nothing was sent upstream this time
    error: str = ""
    error_field: str | None = None  # the form field the error belongs to; None for the whole form
    uploaded_file_id: str = ""  # the upload worked but the create did not: the batch can be created from this id
    conflict: bool = False  # the token is another's, or its first submission is still being answered
    # A split file (create_job): every part sent (or found sent earlier), in order, and how many there are. On a
    # failure part-way, `batch` is None and `parts` names those sent, so the answer can say exactly which.
    parts: tuple[Batch, ...] = ()
    part_count: int = 0
    sent_now: frozenset[str] = frozenset()  # the parts this submission sent (the others were sent before)

    @property
    def is_job(self) -> bool:
        return self.part_count > 1


def create_batch(
    *,
    token: uuid.UUID,
    endpoint: str,
    user: str = "",
    upload=None,
    filename: str = "",
    input_file_id: str = "",
    completion_window: str = "24h",
    metadata: dict[str, str] | None = None,
    output_expires_after: int | None = None,
    client: services.BatchClient | None = None,
    by_person: bool = True,
    connection: Connection | None = None,
) -> CreateOutcome:
    """Upload the input file (or check the given file id), create the batch and record it: once per form token.

    The token is claimed with a unique row before anything is sent, so a repeated or concurrent submission of the
    same form waits for the first one and gets the same batch. A failed attempt releases the token for a retry.
    A person (`by_person`, unlike the automatic retries) may create BATCHBOARD_USER_CREATE_LIMIT batches a minute.
    The batch is made on `connection` (the default one when None).
    """
    connection = connection or Connection.objects.default()
    claim, claimed = _claim_creation(token, user)
    if not claimed:
        return _earlier_outcome(claim, user, connection)
    limit = settings.BATCHBOARD_USER_CREATE_LIMIT
    if by_person and not budget.allow_user(f"creates:{stored_username(user)}", limit):
        logger.warning("Create by %s refused: over the limit of %d a minute", user or "unknown user", limit)
        return _release(claim, CREATE_LIMITED.format(limit=limit), None)
    client = client or services.get_client(services.CallFor.CREATE if by_person else services.CallFor.LOOP, connection)
    if upload is not None:
        try:
            upload.seek(0)
            input_file_id = client.upload_fileobj(upload, filename=_upload_name(filename)).id
        except services.BatchApiError as exc:
            logger.warning("Upload for a new batch failed: %s", exc)
            return _release(
                claim, f"Uploading the file failed. {_create_failure(exc, then=NOTHING_CREATED)}", "input_file"
            )
        BatchCreation.objects.filter(pk=claim.pk).update(input_file_id=input_file_id)
    else:
        try:
            problem = _input_file_problem(client, input_file_id)
        except services.BatchApiError as exc:
            problem = f"Checking the file failed. {_create_failure(exc, then=NOTHING_CREATED)}"
        if problem:
            return _release(claim, problem, "input_file_id")
    try:
        batch = client.create_batch(
            input_file_id=input_file_id,
            endpoint=endpoint,
            completion_window=completion_window,
            metadata=metadata or None,
            output_expires_after=output_expires_after,
        )
    except services.BatchApiError as exc:
        logger.warning("Create of a batch from %s failed: %s", input_file_id, exc)
        then = ""
        if isinstance(exc, services.Unavailable):
            then = "If the request reached the API anyway, the batch will appear in the list; look there first."
        message = f"Creating the batch failed. {_create_failure(exc, then=then)}"
        if upload is not None:
            message = f"The file was uploaded as {input_file_id}, but no batch was made from it. {message}"
            return _release(claim, message, None, uploaded_file_id=input_file_id)
        return _release(claim, message, None)
    row = record_batch(batch, connection=connection)
    BatchCreation.objects.filter(pk=claim.pk).update(batch_id=batch.id)
    logger.info("Batch %s created from %s by %s", batch.id, input_file_id, user or "unknown user")
    return CreateOutcome(batch=row)


def part_token(token: uuid.UUID, number: int) -> uuid.UUID:
    """The form token of part `number` of a split file: the form's own for the first part (its batch is the job),
    one derived from it for the others, so a repeated submission finds every part sent before and sends the rest."""
    return token if number == 1 else uuid.uuid5(token, f"batchboard part {number}")


def create_job(*, token: uuid.UUID, upload, filename: str, plan: list, metadata: dict[str, str], **options):
    """Send a file as its parts (`plan`: batches.forms.FilePart, byte ranges of whole lines), one batch each, in
    order and once per form token (part_token): the first part's batch id is the job's, which the others carry in
    their metadata (batches.lineage_keys). Each part is uploaded from its byte range of the open `upload`, in
    blocks (services.FileRange), never read whole.

    Stops at the first part that fails: the outcome names the parts sent; the same submission again (the same token)
    finds those and sends the rest, never a part twice. Cost: two upstream calls a part (upload, create), over one
    client; the job counts as one create against the user's per-minute limit."""
    count = len(plan)
    stem = filename.removesuffix(".jsonl") or "batch-input"
    connection = options.pop("connection", None) or Connection.objects.default()
    client = services.get_client(services.CallFor.CREATE, connection)
    sent: list[Batch] = []
    sent_now: set[str] = set()
    for number, part in enumerate(plan, start=1):
        first = sent[0].batch_id if sent else ""
        outcome = create_batch(
            token=part_token(token, number),
            upload=services.FileRange(upload, part.start, part.length),
            filename=f"{stem}.part{number}of{count}.jsonl",
            metadata=part_metadata(metadata, part=number, parts=count, first=first),
            client=client,
            connection=connection,
            by_person=number == 1,  # one file, one create against the user's per-minute limit
            **options,
        )
        if outcome.batch is None:
            return CreateOutcome(
                error=f"Part {number} of {count} was not sent. {outcome.error}",
                error_field=outcome.error_field if number == 1 else None,
                conflict=outcome.conflict,
                parts=tuple(sent),
                part_count=count,
                sent_now=frozenset(sent_now),
            )
        if outcome.repeated and (outcome.batch.part, outcome.batch.parts) != (number, count):
            # The token sent another file before (a form reused with a different file): send nothing more.
            return CreateOutcome(
                error=f"This form was already used to send a file as {outcome.batch.parts or 1} batch(es), starting "
                f"with {outcome.batch.batch_id}; this file would be {count}. Reload the page to send it as a new job.",
                conflict=True,
                parts=tuple(sent),
                part_count=count,
                sent_now=frozenset(sent_now),
            )
        if not outcome.repeated:
            sent_now.add(outcome.batch.batch_id)
        sent.append(outcome.batch)
    return CreateOutcome(
        batch=sent[0], repeated=not sent_now, parts=tuple(sent), part_count=count, sent_now=frozenset(sent_now)
    )


def _claim_creation(token: uuid.UUID, user: str) -> tuple[BatchCreation | None, bool]:
    """(claim, True) when this call owns the token; else the existing claim, once it has a batch or the wait ends."""
    deadline = time.monotonic() + CREATE_WAIT_SECONDS
    while True:
        claim, claimed = BatchCreation.objects.claim(token, user)
        if claimed:
            return claim, True
        if claim is not None and (
            claim.batch_id or claim.created_by != stored_username(user) or time.monotonic() >= deadline
        ):
            return claim, False
        time.sleep(0.2)  # The first submission is still uploading or creating (or gave up: then claim again).


def _earlier_outcome(claim: BatchCreation, user: str, connection: Connection) -> CreateOutcome:
    if claim.created_by != stored_username(user):
        return CreateOutcome(
            error="This form has already been used. Reload the page to start a new batch.", conflict=True
        )
    row = Batch.objects.filter(connection=connection, batch_id=claim.batch_id).first() if claim.batch_id else None
    if row is not None:
        return CreateOutcome(batch=row, repeated=True)
    return CreateOutcome(
        error="This form is still being submitted (the first submission is uploading or creating the batch). "
        "It will appear in the list of batches when it is done; reload this page to start a new batch.",
        conflict=True,
    )


def _release(claim: BatchCreation, error: str, field: str | None, uploaded_file_id: str = "") -> CreateOutcome:
    """Give the token back, so submitting the same form again tries again."""
    claim.delete()
    return CreateOutcome(error=error, error_field=field, uploaded_file_id=uploaded_file_id)


def _upload_name(filename: str) -> str:
    # The API accepts batch input only from a file whose name ends in .jsonl.
    filename = filename or "batch-input"
    return filename if filename.lower().endswith(".jsonl") else f"{filename}.jsonl"


def _input_file_problem(client: services.BatchClient, file_id: str) -> str:
    try:
        file = client.retrieve_file(file_id)
    except services.NotFound:
        return f"There is no file {file_id}: it may have expired, been deleted, or belong to another project."
    if file.purpose != "batch":
        return f"{file_id} was uploaded with purpose “{file.purpose}”; a batch needs a file with purpose “batch”."
    if file.bytes > services.MAX_INPUT_FILE_BYTES:
        return f"{file_id} is larger than the 200 MB a batch input may be."
    return ""


def _create_failure(exc: services.BatchApiError, *, then: str) -> str:
    return failure_message(exc, then=then, retry="Wait a moment and submit again.")
