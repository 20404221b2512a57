"""The results app's reactions to the core's events (connected in ResultsConfig.ready())."""

from batches.models import Batch
from results import archive


def keep_when_final(sender, batch_pk: int, historical: bool, **kwargs) -> None:
    """A batch became final: keep its files when BATCHBOARD_ARCHIVE says so (a reaction, fetched by a task worker)."""
    if not archive.keeps_when_final(historical):
        return
    batch = Batch.objects.filter(pk=batch_pk).only("pk", "is_terminal", "output_file_id", "error_file_id").first()
    if batch is not None and archive.wants_archive(batch):
        archive.keep(batch)
