"""Whether a retry's claim holds: a batch whose metadata names a parent counts as its retry only when its input lines
are, byte for byte, lines of the parent's input (and so carry the same custom_ids), read from the kept input files.

Anyone who may create batches can write the metadata, so a claim alone must never bring a batch's answers into
another job's final results or cost.

Cost model: the parent's kept input is streamed once into a set of line digests (32 bytes per line: about 5 MB for
50,000 lines), then the child's is streamed against it; neither file is ever held in memory. No upstream call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from django.utils import timezone

from batches import reactions
from batches.lineage_keys import LineageState
from batches.models import Batch
from results.archive import MODE_OFF, keep, results_storage, wants_archive
from results.models import ArchiveState, ResultArchive

READ_CHUNK = 64 * 1024
NOTE_LENGTH = 300
STEP = "verify_lineage"
# Claimants woken at once by one event; any others are looked at by their own periodic check.
WAKE_LIMIT = 200
# A claim that cannot be decided yet is looked at again after this long, growing with its age up to the maximum;
# what it waits for (an input kept, a parent's own verdict) wakes it at once (see retries.receivers).
RECHECK_SECONDS = (60.0, 3600.0)


@dataclass(frozen=True)
class Verdict:
    state: str
    note: str = ""
    # Not decidable yet (an input still to be kept, a parent not seen or not verified yet): check again later.
    wait: bool = False


def _waiting(note: str) -> Verdict:
    return Verdict(LineageState.UNVERIFIED, note, wait=True)


def check(child: Batch) -> Verdict:
    """The verdict on `child`'s claim, from what is stored now; asks for the inputs to be kept when they are not."""
    parent_id = child.retry_of
    parent = Batch.objects.filter(connection_id=child.connection_id, batch_id=parent_id).first()
    if parent is None:
        return _waiting(f"{parent_id} has not been seen by this dashboard yet")
    if parent.retry_of and parent.lineage_state == LineageState.UNVERIFIED:
        return _waiting(f"{parent_id}'s own link is not verified yet")
    if child.job != parent.job_id:
        return Verdict(
            LineageState.NOT_MATCHING, f"it names the job {child.job}, but {parent_id} is in {parent.job_id}"
        )
    inputs = {}
    for batch in (parent, child):
        kept = _kept_input(batch)
        if isinstance(kept, Verdict):
            return kept
        inputs[batch.pk] = kept
    mismatch = _first_foreign_line(inputs[parent.pk], inputs[child.pk])
    if mismatch is None:
        return Verdict(LineageState.VERIFIED, f"every line is one of {parent_id}'s")
    if mismatch == 0:
        return Verdict(LineageState.NOT_MATCHING, "its input is empty")
    return Verdict(
        LineageState.NOT_MATCHING, f"its lines are not {parent_id}'s (line {mismatch} is not a line of {parent_id})"
    )


def _kept_input(batch: Batch) -> str | Verdict:
    """The stored name of the batch's kept input file, or why there is none (yet); asks for it to be kept."""
    archive = ResultArchive.objects.filter(batch=batch).first()
    if archive is None:
        if not batch.is_terminal:
            return _waiting(f"waiting for {batch.batch_id} to finish and its input to be kept")
        if not wants_archive(batch):
            return Verdict(LineageState.UNVERIFIED, f"{batch.batch_id} has no results, so its input is not kept")
        if batch.connection.archive_mode == MODE_OFF:
            return Verdict(LineageState.UNVERIFIED, "results are not kept here (archive mode off)")
        keep(batch)
        return _waiting("waiting for both inputs to be kept")
    if archive.is_pending:
        return _waiting("waiting for both inputs to be kept")
    if archive.state != ArchiveState.READY or not archive.input_name:
        return Verdict(LineageState.UNVERIFIED, f"{batch.batch_id}'s input is not kept ({_why_not(archive)})")
    return archive.input_name


def _why_not(archive: ResultArchive) -> str:
    if archive.evicted_at:
        return "its files were removed to stay within the disk quota"
    if archive.state == ArchiveState.READY:
        return "the API no longer had it"
    return archive.get_state_display()


def _lines(name: str) -> Iterator[bytes]:
    """Every non-blank line of a stored file without its line break, read in chunks (memory: one chunk, one line)."""
    with results_storage().open(name, "rb") as handle:
        rest = b""
        while chunk := handle.read(READ_CHUNK):
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                if line.strip():
                    yield line.rstrip(b"\r")
        if rest.strip():
            yield rest.rstrip(b"\r")


def _first_foreign_line(parent_input: str, child_input: str) -> int | None:
    """The number (from 1) of the child's first line that is not a line of the parent; 0 when the child has no
    line; None when every line is one of the parent's."""
    parent_lines = {hashlib.sha256(line).digest() for line in _lines(parent_input)}
    number = 0
    for number, line in enumerate(_lines(child_input), start=1):
        if hashlib.sha256(line).digest() not in parent_lines:
            return number
    return None if number else 0


def verify(child: Batch) -> Verdict:
    """Check `child`'s claim and store the verdict on it (a verified claim is final: nothing is checked again)."""
    if not child.retry_of or child.lineage_state == LineageState.VERIFIED:
        return Verdict(child.lineage_state, child.lineage_note)
    verdict = check(child)
    Batch.objects.filter(pk=child.pk).update(lineage_state=verdict.state, lineage_note=verdict.note[:NOTE_LENGTH])
    child.lineage_state, child.lineage_note = verdict.state, verdict.note[:NOTE_LENGTH]
    return verdict


def mark_built_here(child: Batch, parent: Batch) -> None:
    """A retry this dashboard just made from `parent`'s kept lines is verified by construction: its input was copied
    byte for byte from the parent's kept input, and its metadata written here."""
    note = f"made by this dashboard from {parent.batch_id}'s kept lines"
    claimed = Batch.objects.filter(
        pk=child.pk, retry_of=parent.batch_id, job=parent.job_id, lineage_state=LineageState.UNVERIFIED
    )
    if claimed.update(lineage_state=LineageState.VERIFIED, lineage_note=note):
        child.lineage_state, child.lineage_note = LineageState.VERIFIED, note


def react(reaction) -> None:
    """The body of the "verify_lineage" reaction of a batch that claims a parent (batches.reactions.run calls it)."""
    child = reaction.batch
    verdict = verify(child)
    if verdict.wait:
        age = (timezone.now() - reaction.created_at).total_seconds()
        low, high = RECHECK_SECONDS
        raise reactions.Later(min(max(age / 4, low), high), verdict.note)
    claimants = Batch.objects.filter(connection_id=child.connection_id, retry_of=child.batch_id)
    wake(claimants.filter(lineage_state=LineageState.UNVERIFIED))


def wake(claimants) -> None:
    """Check these batches' claims now: schedule the reaction, or wake it if it is waiting."""
    for pk in claimants.values_list("pk", flat=True)[:WAKE_LIMIT]:
        if not reactions.schedule(STEP, pk):
            reactions.wake(STEP, pk)
