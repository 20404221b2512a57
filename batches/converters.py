"""URL converter for batch ids, so a malformed id is a 404 that never reaches the API."""

import logging

from django.urls import reverse

from batches.services import BATCH_ID_PATTERN

logger = logging.getLogger(__name__)


class BatchIdConverter:
    regex = BATCH_ID_PATTERN.pattern

    def to_python(self, value):
        return value

    def to_url(self, value):
        return value


def detail_url(batch_id: str) -> str:
    """The batch's page, or "" (logged) for a stored id that no URL can carry: the row is shown without a link
    rather than taking the page down."""
    if not BATCH_ID_PATTERN.fullmatch(batch_id):
        logger.warning("Batch id %r cannot be linked; shown without a link.", batch_id[:200])
        return ""
    return reverse("batches:detail", args=[batch_id])
