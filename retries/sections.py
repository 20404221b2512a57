"""The retries app on other pages (batches.sections): the detail page's lineage card and the results page's retry
actions. The card may still change after the batch turned final, while an automatic retry is on its way."""

from __future__ import annotations

from django.db.models import Q
from django.utils import timezone

from batches import access, sections
from batches.lineage_keys import LineageState
from batches.models import Reaction, ReactionState
from results.models import ArchiveState, ResultArchive
from retries import auto, verify
from retries.lineage import lineage
from retries.models import AutoRetry
from retries.selection import FILTER

# An archive in these states will not be kept (or is): a claim's check no longer waits for it.
SETTLED_ARCHIVE_STATES = (ArchiveState.READY, ArchiveState.UNAVAILABLE, ArchiveState.PRUNED)


def _auto_retry_expected(batch, auto_retry: AutoRetry | None) -> bool:
    """An automatic retry is being sent, or will be: the batch asks for one and its results are kept (the retry
    is made from them), with no outcome yet (every AutoRetry row is an outcome)."""
    if auto_retry is not None or not batch.is_terminal or auto.retries_left(batch.metadata) <= 0:
        return False
    return ResultArchive.objects.filter(batch=batch, state=ArchiveState.READY).exists()


def _auto_retry_waiting(batch, expected: bool) -> Reaction | None:
    """The automatic retry's reaction while it waits (its error says for what: the history import, its own link's
    check)."""
    if not expected:
        return None
    return Reaction.objects.filter(batch=batch, step=auto.STEP, state=ReactionState.PENDING).first()


def _claim_being_checked(batch) -> bool:
    """The batch's claim to retry another is undecided and about to be decided: its own results are being kept (the
    check follows at once), or the check is running or due now. A claim that waits for longer (its parent not seen
    yet) does not keep the page polling."""
    if not batch.retry_of or batch.lineage_state != LineageState.UNVERIFIED:
        return False
    if ResultArchive.objects.filter(batch=batch).exclude(state__in=SETTLED_ARCHIVE_STATES).exists():
        return True
    due = Q(state=ReactionState.RUNNING) | Q(state=ReactionState.PENDING, run_after__lte=timezone.now())
    return Reaction.objects.filter(due, batch=batch, step=verify.STEP).exists()


def _auto_retry_key(auto_retry: AutoRetry | None):
    if auto_retry is None:
        return None
    return (str(auto_retry.state), auto_retry.retry_batch_id, auto_retry.lines, auto_retry.problem)


def card_context(request, batch) -> dict:
    auto_retry = AutoRetry.objects.filter(parent=batch).first()
    expected = _auto_retry_expected(batch, auto_retry)
    waiting = _auto_retry_waiting(batch, expected)
    return {
        "lineage": lineage(batch),
        "auto_retry": auto_retry,
        "auto_retry_expected": expected,
        "auto_retry_waiting": waiting,
        "claim_being_checked": _claim_being_checked(batch),
        "can_retry": access.may(request.user, access.CREATE, batch.connection_id),
    }


def card_key(context: dict):
    auto_retry = _auto_retry_key(context["auto_retry"])
    waiting = context["auto_retry_waiting"].error if context["auto_retry_waiting"] else None
    return (context["lineage"], auto_retry, context["auto_retry_expected"], waiting, context["can_retry"])


def actions_context(request, batch) -> dict:
    """Retry links on the results page: the current filter's lines, or a choice; and the job's final results (a
    link that an automatic retry on its way will add)."""
    auto_retry = AutoRetry.objects.filter(parent=batch).first()
    return {
        "lineage": lineage(batch),
        "auto_retry_expected": _auto_retry_expected(batch, auto_retry),
        "filter_select": FILTER,
        "can_retry": access.may(request.user, access.CREATE, batch.connection_id),
    }


def actions_key(context: dict):
    return (context["lineage"], context["auto_retry_expected"], context["can_retry"])


def settled(context: dict) -> bool:
    return not context["auto_retry_expected"]


def card_settled(context: dict) -> bool:
    return settled(context) and not context["claim_being_checked"]


CARD = sections.Section(
    name="retries.lineage",
    slot=sections.DETAIL_CARDS,
    template="retries/_lineage.html",
    context=card_context,
    key=card_key,
    settled=card_settled,
)
ACTIONS = sections.Section(
    name="retries.actions",
    slot=sections.RESULTS_ACTIONS,
    template="retries/_results_actions.html",
    context=actions_context,
    key=actions_key,
    settled=settled,
)
