"""What the core announces about batches; it knows nothing of who listens.

The one recording function (batches.models.record_batches) sends these once the transaction that stored the state
has committed, for every path that learns a batch's state: the sync loop's top walk and import, a page's retrieve,
a cancel's or a create's answer, bulk inserts included. Receivers in other apps (results, retries) react by
scheduling a reaction (batches.reactions), never by doing slow work in the sender's thread.

`historical` is True for batches recorded by the history import: old batches, not news.
"""

from django.dispatch import Signal

# A new or changed stored state. kwargs: batch_pk, batch_id, created (first time stored), historical.
batch_changed = Signal()

# A batch was first stored final, or turned final. kwargs: batch_pk, batch_id, historical.
batch_became_final = Signal()
