"""The retries app's reactions, run by task workers: checking a retry's claim, and the automatic retry."""

from django.tasks import task

from batches import reactions
from retries import auto, verify


@task()
def verify_lineage(reaction_id: int) -> None:
    reactions.run(reaction_id, verify.react)


@task()
def auto_retry(reaction_id: int) -> None:
    reactions.run(reaction_id, auto.retry)
