"""What a batch's metadata claims about the batch it retries: the keys, their validation, and the verdict's states.

The keys live here, in the core, because the one recording function reads them for every path; the retries app
writes them when it makes a retry and checks the claim against the kept input files (retries.verify).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.db import models

# Metadata keys a retry carries, so the link survives in the API's own console and in any other dashboard.
RETRY_OF_KEY = "batchboard_retry_of"
JOB_KEY = "batchboard_job"
# Which retry of the job this is: the original is 0, its retry 1, a retry of that retry 2.
ATTEMPT_KEY = "batchboard_attempt"
MAX_ATTEMPT = 1000


class LineageState(models.TextChoices):
    NONE = "", "no retry"
    UNVERIFIED = "unverified", "not verified yet"
    VERIFIED = "verified", "verified"
    NOT_MATCHING = "not_matching", "not matching"


@dataclass(frozen=True)
class Claim:
    """The parent, job and attempt a batch's metadata names; an empty `retry_of` means it claims nothing."""

    retry_of: str = ""
    job: str = ""
    attempt: int = 0


def claim_of(batch_id: str, metadata: dict, id_shape: re.Pattern) -> Claim:
    """Metadata written elsewhere may hold anything: only a batch id other than the batch's own links, a job that
    is no batch id falls back to the parent, and an attempt that is no number in 1..MAX_ATTEMPT counts as 1.

    A batch id is one of the shape of the batch's own connection (`id_shape`, Connection.id_shapes.batch): the
    claimed parent is looked for in that connection only, and nothing longer or stranger than its ids is kept."""
    parent = str(metadata.get(RETRY_OF_KEY) or "").strip()
    if not id_shape.fullmatch(parent) or parent == batch_id:
        return Claim()
    job = str(metadata.get(JOB_KEY) or "").strip()
    if not id_shape.fullmatch(job) or job == batch_id:
        job = parent
    raw = str(metadata.get(ATTEMPT_KEY) or "").strip()
    attempt = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 4 else 0
    return Claim(retry_of=parent, job=job, attempt=attempt if 1 <= attempt <= MAX_ATTEMPT else 1)


# --- Parts of a split file ----------------------------------------------------------------------------------------
# A file over the API's limits is sent as several batches, the parts of one job. The first part is created first and
# its batch id is the job's id; it carries its number and the count (it cannot name itself: its id is not known before
# it is made). Every other part names the first in JOB_KEY. A retry of a part carries none of these keys: it names
# its part in RETRY_OF_KEY/JOB_KEY, and so stays in that part's lineage (the part's retries).
PART_KEY = "batchboard_part"
PARTS_KEY = "batchboard_parts"
# More parts than a 10 GB upload of 200 MB parts could need; a count past it is no claim.
MAX_PARTS = 1000
# The metadata pairs a part of a split job spends on these keys (part 1 spends two, the others three).
PART_KEYS = (JOB_KEY, PART_KEY, PARTS_KEY)


@dataclass(frozen=True)
class PartClaim:
    """The job a batch's metadata says it is a part of (the first part's id, its own for part 1), its number and
    the count; an empty `first` means it claims to be no part."""

    first: str = ""
    part: int = 0
    parts: int = 0


def _small_number(raw) -> int:
    text = str(raw or "").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 4 else 0


def part_claim_of(batch_id: str, metadata: dict, id_shape: re.Pattern) -> PartClaim:
    """Metadata written elsewhere may hold anything: a retry (RETRY_OF_KEY) is no part; a number or a count that is
    no small number, a count under 2 or over MAX_PARTS, a number past the count, a part 1 that names another job, or
    a later part that names no batch id of its own connection's shape (or itself) claims nothing. Whether the named
    first part exists, and in the same connection, is the reader's question (BatchQuerySet.parts_of)."""
    if str(metadata.get(RETRY_OF_KEY) or "").strip():
        return PartClaim()
    part, parts = _small_number(metadata.get(PART_KEY)), _small_number(metadata.get(PARTS_KEY))
    if not (2 <= parts <= MAX_PARTS and 1 <= part <= parts):
        return PartClaim()
    first = str(metadata.get(JOB_KEY) or "").strip()
    if part == 1:
        return PartClaim(first=batch_id, part=1, parts=parts) if first in ("", batch_id) else PartClaim()
    if not id_shape.fullmatch(first) or first == batch_id:
        return PartClaim()
    return PartClaim(first=first, part=part, parts=parts)


def part_metadata(metadata: dict[str, str], *, part: int, parts: int, first: str = "") -> dict[str, str]:
    """The metadata a part is sent with: the user's pairs, then the job's keys (`first` is the first part's id, for
    every part but the first)."""
    own = {PART_KEY: str(part), PARTS_KEY: str(parts)}
    if part > 1:
        own[JOB_KEY] = first
    return {**{k: v for k, v in metadata.items() if k not in PART_KEYS}, **own}
