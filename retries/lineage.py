"""Who retried whom: links recorded from metadata, a batch's job (its original batch and every retry), its cost."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import Q

from batches import pricing
from batches.models import Batch
from batches.services import BATCH_ID_PATTERN
from retries.models import JOB_KEY, RETRY_OF_KEY, RetryLink


def link_for(batch: Batch) -> RetryLink | None:
    """The link `batch`'s metadata names (unsaved), or None when it is no retry."""
    parent = str(batch.metadata.get(RETRY_OF_KEY) or "").strip()
    if not BATCH_ID_PATTERN.fullmatch(parent) or parent == batch.batch_id:
        return None  # metadata written by hand elsewhere may hold anything: only a batch id links
    job = str(batch.metadata.get(JOB_KEY) or "").strip()
    if not BATCH_ID_PATTERN.fullmatch(job):
        job = parent
    return RetryLink(batch=batch, parent_batch_id=parent, job_batch_id=job)


def link_on_save(sender, instance: Batch, created: bool, **kwargs) -> None:
    """post_save of Batch: a new row whose metadata names a parent is linked. Metadata never changes after create, so
    only new rows are looked at (no query at all for a batch that is no retry)."""
    if not created:
        return
    link = link_for(instance)
    if link is None:
        return
    try:
        with transaction.atomic():
            link.save(force_insert=True)
    except IntegrityError:
        pass  # linked already by a concurrent writer


def link_existing() -> int:
    """Link every stored batch whose metadata names a parent (batches recorded before this app, or by a migration).
    search_text holds the metadata keys, so only candidate rows are read."""
    candidates = Batch.objects.filter(search_text__contains=RETRY_OF_KEY, retry_link__isnull=True)
    links = [link for batch in candidates.only("pk", "batch_id", "metadata") if (link := link_for(batch))]
    RetryLink.objects.bulk_create(links, ignore_conflicts=True)
    return len(links)


def job_id_of(batch: Batch) -> str:
    link = RetryLink.objects.filter(batch=batch).first()
    return link.job_batch_id if link else batch.batch_id


def chain(job_batch_id: str):
    """The job's batches, original first, then its retries in the order they were made."""
    return Batch.objects.filter(Q(batch_id=job_batch_id) | Q(retry_link__job_batch_id=job_batch_id))


@dataclass(frozen=True)
class Lineage:
    """What the detail page says about a batch's place in its job."""

    parent_id: str
    parent_known: bool
    job_id: str
    retried_by: list[str]
    retries_in_job: int
    job_cost: pricing.CostTotal | None

    @property
    def is_retry(self) -> bool:
        return bool(self.parent_id)

    @property
    def has_retries(self) -> bool:
        return bool(self.retries_in_job)


def lineage(batch: Batch) -> Lineage:
    """Four small queries: the link, the direct retries, the job's size and its cost (one aggregate)."""
    link = RetryLink.objects.filter(batch=batch).first()
    job_id = link.job_batch_id if link else batch.batch_id
    retried_by = list(
        Batch.objects.filter(retry_link__parent_batch_id=batch.batch_id)
        .order_by("created_at", "batch_id")
        .values_list("batch_id", flat=True)
    )
    retries_in_job = RetryLink.objects.filter(job_batch_id=job_id).count()
    parent_known = bool(link) and Batch.objects.filter(batch_id=link.parent_batch_id).exists()
    return Lineage(
        parent_id=link.parent_batch_id if link else "",
        parent_known=parent_known,
        job_id=job_id,
        retried_by=retried_by,
        retries_in_job=retries_in_job,
        job_cost=chain(job_id).cost_total() if retries_in_job else None,
    )
