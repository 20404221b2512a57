"""What the core announces about batches; it knows nothing of who listens.

The one recording function (batches.models.record_batches) sends these once the transaction that stored the state
has committed, for every path that learns a batch's state: the sync loop's top walk and import, a page's retrieve,
a cancel's or a create's answer, bulk inserts included. Receivers in other apps (results, retries) react by
scheduling a reaction (batches.reactions), never by doing slow work in the sender's thread.

`historical` is True for batches recorded by the history import: old batches, not news.
"""

from django.dispatch import Signal

# What users do that the audit log keeps (the audit app records it, in the request's transaction).
CANCEL, CREATE, DOWNLOAD = "cancel", "create", "download"
# What administrators do to connections in the admin (batches.admin.ConnectionAdmin).
CONNECTION_ADD, CONNECTION_CHANGE, CONNECTION_DELETE = "connection_add", "connection_change", "connection_delete"
OK, ALREADY, REFUSED, ERROR = "ok", "already", "refused", "error"

# A new or changed stored state. kwargs: batch_pk, batch_id, connection_id, created (first time stored), historical.
batch_changed = Signal()

# A batch was first stored final, or turned final. kwargs: batch_pk, batch_id, connection_id, historical.
batch_became_final = Signal()

# The sync loop's process did its housekeeping (about every reactions.SWEEP_EVERY_SECONDS): periodic checks that
# follow time rather than a recorded change (stuck or expiring batches) hang off it. No kwargs.
housekeeping = Signal()

# A user acted (or was refused). kwargs: request, action (CANCEL, CREATE, DOWNLOAD, CONNECTION_*), outcome (OK,
# ALREADY, REFUSED, ERROR), batch_id, target, detail, connection.
user_acted = Signal()


def note_action(
    request, action: str, outcome: str, *, batch_id: str = "", target: str = "", detail: str = "", connection=None
) -> None:
    """Announce a user's action to whoever keeps the record (the audit app); `connection` is the batch's (a
    Connection or its id), when the request's own batch is not the one acted on."""
    user_acted.send(
        sender=None,
        request=request,
        action=action,
        outcome=outcome,
        batch_id=batch_id,
        target=target,
        detail=detail,
        connection=connection,
    )
