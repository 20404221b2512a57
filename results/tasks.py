"""The results app's tasks (django.tasks, run by `manage.py db_worker`)."""

from django.tasks import task

from batches import reactions
from results import archive

# A 100 MB file takes well under a minute to fetch and index; a worker silent for this long has died.
KEEP_LEASE_SECONDS = 1800


@task()
def keep_results(reaction_id: int) -> None:
    """Fetch and index a final batch's files, once: the keep_results reaction is the claim."""
    reactions.run(reaction_id, archive.keep_for_reaction, lease_seconds=KEEP_LEASE_SECONDS)


@task()
def check_results_upstream(reaction_id: int) -> None:
    """Ask whether the API still has a kept batch's files, once a day while someone opens its results."""
    reactions.run(reaction_id, archive.check_for_reaction)
