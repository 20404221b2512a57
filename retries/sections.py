"""The retries app on other pages (batches.sections): the detail page's lineage card and the results page's retry
actions. The card may still change after the batch turned final, while an automatic retry is on its way."""

from __future__ import annotations

from batches import sections
from results.models import ArchiveState, ResultArchive
from retries.auto import retries_left
from retries.lineage import lineage
from retries.models import AutoRetry, AutoRetryState
from retries.selection import FILTER


def _auto_retry_expected(batch, auto_retry: AutoRetry | None) -> bool:
    """An automatic retry is being sent, or will be: the batch asks for one and its results are kept (the retry
    is made from them), with no answer yet."""
    if auto_retry is not None:
        return auto_retry.state == AutoRetryState.CLAIMED
    if not batch.is_terminal or retries_left(batch.metadata) <= 0:
        return False
    return ResultArchive.objects.filter(batch=batch, state=ArchiveState.READY).exists()


def _auto_retry_key(auto_retry: AutoRetry | None):
    if auto_retry is None:
        return None
    return (str(auto_retry.state), auto_retry.retry_batch_id, auto_retry.lines, auto_retry.problem)


def card_context(request, batch) -> dict:
    auto_retry = AutoRetry.objects.filter(parent=batch).first()
    return {
        "lineage": lineage(batch),
        "auto_retry": auto_retry,
        "auto_retry_expected": _auto_retry_expected(batch, auto_retry),
        "can_retry": request.user.has_perm("batches.create_batch"),
    }


def card_key(context: dict):
    auto_retry = _auto_retry_key(context["auto_retry"])
    return (context["lineage"], auto_retry, context["auto_retry_expected"], context["can_retry"])


def actions_context(request, batch) -> dict:
    """Retry links on the results page: the current filter's lines, or a choice; and the job's final results (a
    link that an automatic retry on its way will add)."""
    auto_retry = AutoRetry.objects.filter(parent=batch).first()
    return {
        "lineage": lineage(batch),
        "auto_retry_expected": _auto_retry_expected(batch, auto_retry),
        "filter_select": FILTER,
        "can_retry": request.user.has_perm("batches.create_batch"),
    }


def actions_key(context: dict):
    return (context["lineage"], context["auto_retry_expected"], context["can_retry"])


def settled(context: dict) -> bool:
    return not context["auto_retry_expected"]


CARD = sections.Section(
    name="retries.lineage",
    slot=sections.DETAIL_CARDS,
    template="retries/_lineage.html",
    context=card_context,
    key=card_key,
    settled=settled,
)
ACTIONS = sections.Section(
    name="retries.actions",
    slot=sections.RESULTS_ACTIONS,
    template="retries/_results_actions.html",
    context=actions_context,
    key=actions_key,
    settled=settled,
)
