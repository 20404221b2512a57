"""The results app's reactions to the core's events (connected in ResultsConfig.ready())."""

from batches.models import Batch
from results import archive


def keep_when_final(sender, batch_pk: int, historical: bool, **kwargs) -> None:
    """A batch became final: keep its files when its connection's archive mode (else BATCHBOARD_ARCHIVE) says so (a
    reaction, fetched by a task worker)."""
    columns = ("pk", "is_terminal", "output_file_id", "error_file_id", "connection__archive")
    batch = Batch.objects.filter(pk=batch_pk).select_related("connection").only(*columns).first()
    if batch is None or not archive.keeps_when_final(historical, batch.connection.archive_mode):
        return
    if archive.wants_archive(batch):
        archive.keep(batch)
