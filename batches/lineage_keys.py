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
