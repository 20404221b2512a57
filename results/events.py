"""What the results app announces; it knows nothing of who listens.

`results_kept` is sent once a batch's files are stored and indexed (after the transaction that marked its archive
ready has committed), with batch_pk and batch_id. Receivers (the retries app) schedule reactions, never slow work.
"""

from django.dispatch import Signal

results_kept = Signal()
