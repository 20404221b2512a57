"""What the results app announces: a batch's files were fetched and indexed (the retries app's automatic retry
follows it). Sent once the transaction that stored the index has committed. kwargs: batch_pk, batch_id."""

from django.dispatch import Signal

results_kept = Signal()
