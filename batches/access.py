"""Who may see and do what, per connection: the one place pages, exports, counts and actions ask.

Teams are Django groups; each connection grants view, cancel or create to teams (batches.models.ConnectionQuerySet).
What a user may see is read once per request and kept on the user object.
"""

from __future__ import annotations

from batches.models import Batch, Connection, SavedView

VIEW, CANCEL, CREATE = "view", "cancel", "create"
EVERY = "every"  # how many connections exist


def _grants(user) -> dict:
    """What `user` may do where, read once per request in one query (ConnectionQuerySet.grants_of)."""
    cache = user.__dict__.setdefault("_batchboard_connections", {})
    if VIEW not in cache:
        cache[VIEW], cache[CANCEL], cache[CREATE], cache[EVERY] = Connection.objects.grants_of(user)
    return cache


def connections(user, action: str = VIEW) -> list[Connection]:
    """The connections on which `user` may do `action` (view, cancel, create), read once per request."""
    return _grants(user)[action]


def may(user, action: str, connection: Connection | int) -> bool:
    connection_id = connection if isinstance(connection, int) else connection.pk
    return any(allowed.pk == connection_id for allowed in connections(user, action))


def sees_everything(user) -> bool:
    """The user may view every connection (a superuser, or one in every team): no filter is needed at all. Counted
    once per request, like the grants."""
    if user.is_superuser:
        return True
    grants = _grants(user)
    return len(grants[VIEW]) == grants[EVERY]


def sees_several(user) -> bool:
    """Whether pages name each batch's connection: only for a viewer of several (a one-connection install looks as
    it did before connections existed). A connection kept only for its history counts only if it has batches: the
    default connection of an install configured by a connections file is empty on a fresh machine. Read once per
    request, like the grants."""
    cache = user.__dict__.setdefault("_batchboard_connections", {})
    if "several" not in cache:
        viewable = connections(user)
        configured = [connection for connection in viewable if connection.configured]
        kept = [connection.pk for connection in viewable if not connection.configured]
        cache["several"] = len(viewable) > 1 and (
            len(configured) > 1 or Batch.objects.filter(connection__in=kept).exists()
        )
    return cache["several"]


def visible_batches(user):
    """Every batch `user` may see. Without a filter when they see every connection, so that the list's indexes
    serve them as if there were one."""
    if user.is_authenticated and sees_everything(user):
        return Batch.objects.all()
    return Batch.objects.in_connections(connection.pk for connection in connections(user))


def scope_key(user) -> str:
    """What `user` may see, as a key for renderings and counts shared between viewers with the same scope."""
    if sees_everything(user):
        return "all"
    return ",".join(str(connection.pk) for connection in connections(user)) or "none"


def visible_connection_ids(user) -> list[int] | None:
    """The ids of the connections `user` may see; None when they see every one (no filter needed)."""
    return None if sees_everything(user) else [connection.pk for connection in connections(user)]


def list_freshness_for(user, now=None):
    """How current the list is over the connections `user` may see (the loops of the others do not concern them)."""
    from batches.freshness import list_freshness

    syncing = [connection.list_state for connection in connections(user) if connection.configured]
    return list_freshness(now, states=syncing or None)


def saved_views(user) -> list[SavedView]:
    """The saved views `user` may open (their own and their teams'), less those naming a batch they may not see: a
    view shared with a team by a member of several teams would otherwise tell the others of it by its address."""
    views = list(SavedView.objects.visible_to(user))
    named = {view.batch_id for view in views} - {""}
    seen = set(visible_batches(user).filter(batch_id__in=named).values_list("batch_id", flat=True)) if named else set()
    return [view for view in views if not view.batch_id or view.batch_id in seen]
