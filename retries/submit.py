"""Building a retry's input from the kept original lines and creating it through the create page's validated path.

Cost model: one query streams the selected lines' offsets (in chunks); the input lines are copied byte for byte from
the kept input file into a temporary file on disk, which is validated (with the estimate counted in the same pass)
and uploaded as a stream. Memory stays flat whatever the number of lines.
"""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass

from django.core.files import File

from batches import actions
from batches.forms import CreateBatchForm, metadata_field_names
from batches.lineage_keys import ATTEMPT_KEY, JOB_KEY, PART_KEY, PARTS_KEY, RETRY_OF_KEY
from batches.models import Batch
from batches.services import METADATA_MAX_PAIRS
from results.archive import iter_input_bytes
from results.models import ResultArchive
from retries import verify
from retries.models import AUTO_RETRY_KEY
from retries.selection import RetrySelection

# A retry of a part of a split file is no part itself: it stays in its part's lineage (batches.lineage_keys).
OWN_KEYS = (RETRY_OF_KEY, JOB_KEY, ATTEMPT_KEY, AUTO_RETRY_KEY, PART_KEY, PARTS_KEY)
# Spooled to disk past this size: a retry of 50,000 lines never sits in memory.
SPOOL_BYTES = 1024 * 1024


def build_input(archive: ResultArchive, selection: RetrySelection) -> tuple[tempfile.SpooledTemporaryFile, int]:
    """The selected original input lines, byte for byte, in input order, in a temporary file; and their count."""
    handle = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, mode="w+b")  # noqa: SIM115 (the caller closes it)
    count = 0
    for raw in iter_input_bytes(archive, selection.lines(archive)):
        handle.write(raw)
        count += 1
    handle.seek(0)
    return handle, count


def retry_metadata(parent: Batch, *, auto_retries: int | None = None) -> dict[str, str]:
    """The parent's own metadata (what describes the job) with the links to the parent, the job (the parent's own
    job when its link is verified, else the parent itself) and the attempt, within the API's limit of pairs: the
    links always fit, the parent's last pairs give way."""
    own = {RETRY_OF_KEY: parent.batch_id, JOB_KEY: parent.job_id, ATTEMPT_KEY: str(attempt_after(parent))}
    if auto_retries:
        own[AUTO_RETRY_KEY] = str(auto_retries)
    inherited = [(key, value) for key, value in parent.metadata.items() if key not in OWN_KEYS]
    inherited = inherited[: METADATA_MAX_PAIRS - len(own)]
    return {**dict(inherited), **own}


def attempt_after(parent: Batch) -> int:
    """The attempt number of a retry of `parent`: one more than the parent's (an original's is 0)."""
    return parent.attempt + 1


def retry_form(
    parent: Batch,
    handle,
    *,
    token: uuid.UUID | str,
    completion_window: str = "24h",
    auto_retries: int | None = None,
) -> CreateBatchForm:
    """The create page's form, bound to the built input: validating it checks the file and counts the estimate."""
    data = {
        "endpoint": parent.endpoint,
        "completion_window": completion_window,
        "output_expiry_unit": "days",
        "token": str(token),
    }
    metadata = retry_metadata(parent, auto_retries=auto_retries)
    for number, (key, value) in enumerate(metadata.items(), start=1):
        key_name, value_name = metadata_field_names(number)
        data[key_name], data[value_name] = key, value
    upload = File(handle, name=f"retry-of-{parent.batch_id}.jsonl")
    return CreateBatchForm(data, {"input_file": upload}, connections=[parent.connection])


@dataclass(frozen=True)
class Prepared:
    parent: Batch
    form: CreateBatchForm
    lines: int

    @property
    def metadata_pairs(self) -> list[tuple[str, str]]:
        """The metadata the retry is sent with, as pairs: its keys come from the parent batch, so a template must
        not look anything up on the dict (a key named "items" would shadow the method)."""
        return list((self.form.cleaned_data.get("metadata") or {}).items())

    @property
    def error_messages(self) -> list[str]:
        """Every error of the form, field errors and the others alike."""
        return [str(message) for messages in self.form.errors.values() for message in messages]


def prepare(parent: Batch, archive: ResultArchive, selection: RetrySelection, **options) -> Prepared:
    """Build and validate a retry without sending anything: what the confirmation shows and what create sends."""
    handle, lines = build_input(archive, selection)
    form = retry_form(parent, handle, **options)
    form.is_valid()
    return Prepared(parent=parent, form=form, lines=lines)


def create(prepared: Prepared, *, user: str, by_person: bool = True) -> actions.CreateOutcome:
    """Send a validated retry through the same path as the create page (one batch per form token); a person's
    retries count against their per-minute limit of creates, automatic ones do not. The batch it makes is a
    verified retry of the parent."""
    data = prepared.form.cleaned_data
    upload = data["input_file"]
    outcome = actions.create_batch(
        token=data["token"],
        user=user,
        endpoint=data["endpoint"],
        upload=upload,
        filename=upload.name,
        completion_window=data["completion_window"],
        metadata=data["metadata"],
        output_expires_after=data["output_expires_after"],
        by_person=by_person,
        connection=prepared.parent.connection,
    )
    if outcome.batch is not None:
        verify.mark_built_here(outcome.batch, prepared.parent)
    return outcome
