"""What several views share: a batch refreshed for display, or the page that says why there is none."""

from django.http import Http404
from django.shortcuts import render

from batches import access, lookups, services
from batches.freshness import Freshness
from batches.models import Batch, Connection

# The query parameter that picks one connection's batch when the id exists in several.
CONNECTION_PARAMETER = "connection"


class AmbiguousBatch(Exception):
    """The id names a batch in more than one of the viewer's connections (possible with compatible providers)."""

    def __init__(self, batch_id: str, batches: list[Batch]):
        super().__init__(batch_id)
        self.batch_id = batch_id
        self.batches = batches


def visible_batch_connection(request, batch_id: str) -> Connection:
    """The viewer's connection that has this batch; raises Http404 when none of theirs has it (the same answer as
    for an id that exists nowhere), AmbiguousBatch when several do and `?connection=` does not pick one.

    An id the cache does not know yet is asked of the one connection the viewer sees (or the one named) whose ids
    may have its shape (a gateway's long id is no OpenAI connection's), never of every connection: an unknown id
    must not cost one upstream call per connection.
    """
    viewable = access.connections(request.user)
    wanted = request.GET.get(CONNECTION_PARAMETER, "")
    if wanted:
        viewable = [connection for connection in viewable if connection.slug == wanted]
    rows = list(Batch.objects.filter(batch_id=batch_id, connection__in=viewable).select_related("connection"))
    if len(rows) > 1:
        raise AmbiguousBatch(batch_id, rows)
    if rows:
        return rows[0].connection
    syncing = [
        connection
        for connection in viewable
        if connection.configured and not connection.paused and connection.id_shapes.batch.fullmatch(batch_id)
    ]
    if len(syncing) == 1:
        return syncing[0]
    raise Http404(f"There is no batch {batch_id}.")


def existing_batch_connection(request, batch_id: str) -> Connection:
    """visible_batch_connection for an action (cancel, retry): also a 404 for an id that neither the cache nor the
    API knows, before any permission is checked, so that acting on another team's batch answers exactly as acting
    on no batch at all (a 403 would say there is something there). Costs an upstream call only for an id the cache
    does not know, once per NOT_FOUND_SECONDS."""
    connection = visible_batch_connection(request, batch_id)
    if not Batch.objects.filter(connection=connection, batch_id=batch_id).exists():
        try:
            lookups.refresh_batch(batch_id, user_key=user_key(request), connection=connection)
        except services.NotFound:
            raise Http404(f"There is no batch {batch_id}.") from None
    return connection


def refreshed_batch(request, batch_id: str) -> tuple[Batch | None, Freshness]:
    """The batch, refreshed when it can still change; a 404 for an id neither the cache nor the API knows, or that
    is not in a connection the viewer may see.

    None (with the reason in the Freshness) when the cache has never seen it and the API cannot be asked.
    """
    connection = visible_batch_connection(request, batch_id)
    try:
        return lookups.refresh_batch(batch_id, user_key=user_key(request), connection=connection)
    except services.NotFound:
        raise Http404(f"There is no batch {batch_id}.") from None


def user_key(request) -> str:
    """Whose per-minute limit of upstream-causing requests this request counts against."""
    return f"user:{request.user.pk}"


def unreachable(request, batch_id: str, freshness: Freshness):
    return render(request, "batches/unreachable.html", {"batch_id": batch_id, "freshness": freshness}, status=503)


def ambiguous(request, error: AmbiguousBatch):
    """The page for an id that exists in several of the viewer's connections: it says so and links each."""
    choices = [
        (batch.connection, f"{request.path}?{CONNECTION_PARAMETER}={batch.connection.slug}") for batch in error.batches
    ]
    return render(request, "batches/ambiguous.html", {"batch_id": error.batch_id, "choices": choices}, status=300)
