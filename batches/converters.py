"""URL converter for batch ids, so a malformed id is a 404 that never reaches the API.

URLs take any path-safe id (services.ANY_ID_PATTERN), the shape of every connection's ids, a compatible
provider's long encoded ones included; the client checks an id again against its own connection's shape before
any call."""

import logging

from django.urls import reverse

from batches.services import ANY_ID_PATTERN

logger = logging.getLogger(__name__)


class BatchIdConverter:
    regex = ANY_ID_PATTERN.pattern

    def to_python(self, value):
        return value

    def to_url(self, value):
        return value


def detail_url(batch_id: str) -> str:
    """The batch's page, or "" (logged) for a stored id that no URL can carry: the row is shown without a link
    rather than taking the page down."""
    if not ANY_ID_PATTERN.fullmatch(batch_id):
        logger.warning("Batch id %r cannot be linked; shown without a link.", batch_id[:200])
        return ""
    return reverse("batches:detail", args=[batch_id])
