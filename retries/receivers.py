"""What the retries app does when the core records a batch or the results app keeps one's files: it schedules its
reactions (retries.tasks), never slow work in the sender's thread."""

from django.db.models import Q

from batches import reactions
from batches.lineage_keys import LineageState
from batches.models import Batch
from retries import auto, submit, verify


def check_new_claim(sender, batch_pk: int, batch_id: str, created: bool, **kwargs) -> None:
    """batch_changed: a batch stored for the first time gets its claim checked if its metadata names a parent, and
    the claims waiting for it to be seen are looked at again (one indexed query)."""
    if created:
        verify.wake(
            Batch.objects.filter(
                Q(pk=batch_pk, retry_of__gt="") | Q(retry_of=batch_id, lineage_state=LineageState.UNVERIFIED)
            )
        )


def react_to_kept_results(sender, batch_pk: int, batch_id: str, **kwargs) -> None:
    """results_kept: the claims of this batch and of its claimed retries may be decidable now; and a batch that
    asks for automatic retries gets one (once per attempt: the reaction's key)."""
    verify.wake(Batch.objects.filter(Q(pk=batch_pk) | Q(retry_of=batch_id), lineage_state=LineageState.UNVERIFIED))
    batch = Batch.objects.filter(pk=batch_pk).only("pk", "metadata", "attempt").first()
    if batch is not None and auto.retries_left(batch.metadata) > 0:
        reactions.schedule(auto.STEP, batch_pk, attempt=submit.attempt_after(batch))
