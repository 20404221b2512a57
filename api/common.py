"""What every operation on one batch starts with: the id checked as the pages' URL converter checks it, and the batch
found (refreshed when it can still change) among those the caller may see."""

from __future__ import annotations

from api.errors import ApiError
from batches import services
from batches.models import Batch
from batches.views.common import refreshed_batch


def checked_id(batch_id: str) -> str:
    """An id as the pages' URL converter takes it; anything else is the 404 of an address that does not exist."""
    if not services.ANY_ID_PATTERN.fullmatch(batch_id):
        raise ApiError(404, f"There is no batch {batch_id[:40]}.")
    return batch_id


def visible_batch(request, batch_id: str) -> Batch:
    """The batch, or the 404 of a missing one (another team's batch included), or a 503 when it cannot be read."""
    batch, freshness = refreshed_batch(request, checked_id(batch_id))
    if batch is None:
        raise ApiError(503, freshness.error_message or "The batch cannot be read now; try again in a moment.")
    return batch
