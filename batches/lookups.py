"""What a page may ask the API for itself: one running batch refreshed, a file's size, a file's content.

Each is bounded: a page waits at most services.PAGE_TIMEOUT for an answer; a batch refresh is coalesced across
viewers (one retrieve per interval, whatever the number of viewers or processes); an id the API does not know is
remembered for NOT_FOUND_SECONDS in the shared cache, so asking again costs nothing upstream; each user has a
per-minute limit on requests that reach the API; and every call spends the shared upstream budget (batches.budget,
through the service client). Views call these, never the client.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import OperationalError
from django.utils import timezone

from batches import budget, services
from batches.freshness import Freshness, error_kind, failure_message
from batches.models import Batch, Connection, record_batch

logger = logging.getLogger(__name__)

# An id the API answered 404 for costs no further call for this long.
NOT_FOUND_SECONDS = 300
# A failed refresh is shown to every viewer of the batch for this long (they did not make the call themselves).
FAILURE_SHOWN_SECONDS = 60
# A file's size never changes, so one lookup per file is enough for a long while.
FILE_SIZE_SECONDS = 6 * 3600
# After a size lookup got no answer at all (the API is down or hangs), pages skip the lookups for this long rather
# than each wait out the timeout again. A quick error answer costs no wait and is not remembered.
FILE_SIZE_UNREACHABLE_SECONDS = 60
FILE_SIZE_UNREACHABLE_KEY = "batchboard:file-bytes:unreachable"
DATABASE_BUSY = "The dashboard's database is busy, so nothing was refreshed; showing the last known state."
USER_LIMITED = (
    "You have asked for many batches or files the dashboard had to fetch from the OpenAI API in the last minute; "
    "showing what it knows. Try again in a minute."
)


class UserLimited(Exception):
    """This user's per-minute limit of requests that reach the API is spent."""


# An id longer than this (a compatible provider's, up to 500 characters) is named in a cache key by its digest:
# memcached refuses keys over 250 characters.
KEY_ID_CHARS = 100


def _key_part(connection_id: int, object_id: str) -> str:
    """A connection's object as part of a cache key: ids are unique per connection only."""
    if len(object_id) > KEY_ID_CHARS:
        object_id = "sha256-" + hashlib.sha256(object_id.encode()).hexdigest()
    return f"{connection_id}:{object_id}"


def _not_found_key(kind: str, connection_id: int, object_id: str) -> str:
    return f"batchboard:not-found:{kind}:{_key_part(connection_id, object_id)}"


def _within_user_limit(user_key: str) -> bool:
    return not user_key or budget.allow_user(f"upstream:{user_key}", settings.BATCHBOARD_USER_UPSTREAM_PER_MINUTE)


def refresh_batch(
    batch_id: str,
    *,
    user_key: str = "",
    client: services.BatchClient | None = None,
    connection: Connection | None = None,
) -> tuple[Batch | None, Freshness]:
    """The cached batch, refreshed from the API unless it is final, was seen within the interval, or another viewer
    is refreshing it.

    Raises services.NotFound for a batch that the API does not know (answered now, or within NOT_FOUND_SECONDS) and
    the cache has never seen. Other failures return the cached row (or None) with a Freshness saying why it is not
    fresh. No state row is written for an id until the API has answered for it. The batch is the `connection`'s
    (the default one's when None).
    """
    connection = connection or Connection.objects.default()
    row = Batch.objects.filter(connection=connection, batch_id=batch_id).first()
    if row is not None and row.is_terminal:
        return row, Freshness(ok=True, as_of=row.last_seen_at)
    not_found_key = _not_found_key("batch", connection.pk, batch_id)
    if row is None and cache.get(not_found_key):
        raise services.NotFound(f"No batch found with id '{batch_id}'.", status=404)
    now = timezone.now()
    interval = settings.BATCHBOARD_REFRESH_INTERVAL
    if row is not None and interval > 0 and row.last_seen_at > now - timedelta(seconds=interval):
        return row, Freshness(ok=True, as_of=row.last_seen_at)  # The sync loop (or another viewer) just saw it.
    try:
        if row is not None and not Batch.objects.filter(pk=row.pk).claim_refresh(batch_id, now, interval):
            return row, _shown_freshness(row)  # Another viewer is refreshing it within this interval.
        if not _within_user_limit(user_key):
            return row, Freshness(
                ok=False, as_of=row and row.last_seen_at, error_kind="limited", error_message=USER_LIMITED
            )
        return _fetch(batch_id, row, client, connection, not_found_key)
    except OperationalError as exc:
        logger.warning("Refresh of %s skipped: %s", batch_id, exc)
        return row, Freshness(ok=False, as_of=row and row.last_seen_at, error_kind="error", error_message=DATABASE_BUSY)


def _fetch(
    batch_id: str, row: Batch | None, client: services.BatchClient | None, connection: Connection, not_found_key: str
) -> tuple[Batch | None, Freshness]:
    try:
        batch = (client or services.get_client(services.CallFor.PAGE, connection)).retrieve_batch(batch_id)
    except services.NotFound:
        cache.set(not_found_key, True, NOT_FOUND_SECONDS)
        if row is None:
            raise
        return row, Freshness(
            ok=False,
            as_of=row.last_seen_at,
            error_kind="error",
            error_message="The API no longer knows this batch; showing the last known state.",
        )
    except services.BatchApiError as exc:
        logger.warning("Refresh of %s failed: %s", batch_id, exc)
        freshness = Freshness(
            ok=False, as_of=row and row.last_seen_at, error_kind=error_kind(exc), error_message=failure_message(exc)
        )
        cache.set(
            _failure_key(connection.pk, batch_id),
            (freshness.error_kind, freshness.error_message),
            FAILURE_SHOWN_SECONDS,
        )
        return row, freshness
    cache.delete(_failure_key(connection.pk, batch_id))
    row = record_batch(batch, connection=connection)
    return row, Freshness(ok=True, as_of=row.last_seen_at)


def _failure_key(connection_id: int, batch_id: str) -> str:
    # Per connection: two connections may share an id (compatible providers), and one's failure (its upstream's
    # words) must not show on the other's page, to viewers who may see only that one.
    return f"batchboard:refresh-failed:{_key_part(connection_id, batch_id)}"


def _shown_freshness(row: Batch) -> Freshness:
    """What a viewer who did not make the call sees: the last refresh's failure if it failed, else fresh."""
    failure = cache.get(_failure_key(row.connection_id, row.batch_id))
    if failure is None:
        return Freshness(ok=True, as_of=row.last_seen_at)
    kind, message = failure
    return Freshness(ok=False, as_of=row.last_seen_at, error_kind=kind, error_message=message)


def file_size_key(connection_id: int, file_id: str) -> str:
    """Where file_size() keeps a file's size in the shared cache."""
    return f"batchboard:file-bytes:{_key_part(connection_id, file_id)}"


def file_size(file_id: str, *, fetch: bool, user_key: str = "", connection: Connection | None = None) -> int | None:
    """The file's size (a file of the `connection`, the default one when None) from the cache, or from the API when
    `fetch` allows; None when unknown."""
    connection = connection or Connection.objects.default()
    key = file_size_key(connection.pk, file_id)
    unreachable_key = f"{FILE_SIZE_UNREACHABLE_KEY}:{connection.pk}"
    not_found_key = _not_found_key("file", connection.pk, file_id)
    size = cache.get(key)
    if size is not None or not fetch or cache.get(unreachable_key):
        return size
    if cache.get(not_found_key) or not _within_user_limit(user_key):
        return None
    try:
        size = services.get_client(services.CallFor.PAGE, connection).retrieve_file(file_id).bytes
    except services.BatchApiError as exc:
        logger.info("Size of %s unavailable: %s", file_id, exc)
        if isinstance(exc, services.NotFound):
            cache.set(not_found_key, True, NOT_FOUND_SECONDS)
        elif exc.status is None and not isinstance(exc, services.BudgetExhausted):
            cache.set(unreachable_key, True, FILE_SIZE_UNREACHABLE_SECONDS)
        return None
    cache.set(key, size, FILE_SIZE_SECONDS)
    return size


def file_content(file_id: str, *, user_key: str = "", connection: Connection | None = None) -> services.FileContent:
    """The file's bytes (a file of the `connection`, the default one when None) as a stream. Raises
    services.NotFound (also when remembered), UserLimited, or another services.BatchApiError before any byte is
    sent."""
    connection = connection or Connection.objects.default()
    not_found_key = _not_found_key("file", connection.pk, file_id)
    if cache.get(not_found_key):
        raise services.NotFound(f"No such File object: {file_id}", status=404)
    if not _within_user_limit(user_key):
        raise UserLimited(USER_LIMITED)
    try:
        return services.get_client(services.CallFor.DOWNLOAD, connection).file_content(file_id)
    except services.NotFound:
        cache.set(not_found_key, True, NOT_FOUND_SECONDS)
        raise
