"""Each connection keeps its results by its own archive mode (Connection.archive), else BATCHBOARD_ARCHIVE."""

import pytest

from batches.models import Connection, record_batches
from results.models import ResultArchive
from tests.conftest import completed


@pytest.mark.parametrize(
    ("mode", "historical", "kept"), [("off", False, False), ("all", True, True), ("", False, True)]
)
def test_a_connection_keeps_final_batches_by_its_own_archive_mode(tasks, settings, mode, historical, kept):
    settings.BATCHBOARD_ARCHIVE = "new"
    connection = Connection.objects.create(name="Lab", slug="lab", base_url="http://127.0.0.1:9/v1", archive=mode)

    record_batches([completed("batch_lab1")], historical=historical, connection=connection)
    tasks.commit_callbacks()

    assert ResultArchive.objects.filter(batch__connection=connection).exists() == kept
