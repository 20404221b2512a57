"""The Notifications page: a user's own destinations and subscriptions, their teams' for a team administrator
(notifications.manage_team, or a superuser), the delivery log, and the detail page's Watch button."""

from __future__ import annotations

from functools import partial

from django.conf import settings
from django.contrib import messages
from django.db import transaction
from django.db.models import Count
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST, require_safe

from batches import access
from notifications import delivery
from notifications.forms import DestinationForm, SubscriptionForm
from notifications.jobs import job_of
from notifications.messages import batch_path
from notifications.models import Attempt, Destination, Notification, Scope, State, Subscription
from notifications.tasks import enqueue_sends


def _page_context(request, **extra) -> dict:
    destinations = list(Destination.objects.managed_by(request.user).select_related("team"))
    ids = [destination.pk for destination in destinations]
    subscriptions = Subscription.objects.filter(destination__in=ids).select_related(
        "destination", "batch", "connection", "created_by"
    )
    log = (
        Attempt.objects.filter(notification__destination__in=ids)
        .select_related("notification__destination", "notification__batch__connection", "notification__connection")
        .order_by("-at", "-pk")[: settings.BATCHBOARD_NOTIFY_LOG_LENGTH]
    )
    waiting = Notification.objects.filter(destination__in=ids, state=State.PENDING).count()
    paused = [destination for destination in destinations if destination.paused_at]
    held = dict(
        Notification.objects.filter(destination__in=[destination.pk for destination in paused], state=State.HELD)
        .values_list("destination")
        .annotate(count=Count("pk"))
        .order_by()
    )
    for destination in paused:
        destination.held = held.get(destination.pk, 0)
    context = {
        "destinations": destinations,
        "paused": paused,
        "held_hours": settings.BATCHBOARD_NOTIFY_HELD_HOURS,
        "subscriptions": list(subscriptions),
        "log": list(log),
        "waiting": waiting,
        "destination_form": DestinationForm(user=request.user),
        "subscription_form": SubscriptionForm(user=request.user),
    }
    context.update(extra)
    return context


@require_safe
def notifications_page(request):
    return render(request, "notifications/page.html", _page_context(request))


@require_POST
@never_cache  # the answer may show a signed webhook's secret: never kept by a cache or the browser's history
def add_destination(request):
    form = DestinationForm(request.POST, user=request.user)
    if not form.is_valid():
        messages.error(request, "The destination was not added; see below why.")
        return render(request, "notifications/page.html", _page_context(request, destination_form=form), status=400)
    destination, secret = form.save()
    messages.success(request, f"Added the destination “{destination.name}” ({destination.shown}).")
    if secret:  # shown in this answer only: it is stored encrypted and never shown again
        return render(request, "notifications/page.html", _page_context(request, new_secret=secret, new=destination))
    return redirect("notifications:page")


def _managed(request, pk: int) -> Destination:
    destination = Destination.objects.managed_by(request.user).filter(pk=pk).first()
    if destination is None:
        raise Http404("There is no such destination among yours.")
    return destination


@require_POST
def delete_destination(request, pk: int):
    destination = _managed(request, pk)
    destination.delete()
    messages.success(request, f"Deleted the destination “{destination.name}” and its subscriptions.")
    return redirect("notifications:page")


@require_POST
def resume_destination(request, pk: int):
    destination = _managed(request, pk)
    summarised, skipped = delivery.resume(destination)
    said = f"Resumed “{destination.name}”: it gets notifications again."
    if summarised:
        said += f" What it missed while paused ({summarised:,}) goes out as one summary."
    if skipped:
        hours = settings.BATCHBOARD_NOTIFY_HELD_HOURS
        said += f" {skipped:,} held for longer than {hours} h {'were' if skipped != 1 else 'was'} not sent."
    messages.success(request, said)
    return redirect("notifications:page")


@require_POST
def test_destination(request, pk: int):
    destination = _managed(request, pk)
    Notification.objects.create(destination=destination, event="test", is_test=True)
    transaction.on_commit(partial(enqueue_sends, [destination.pk]))
    messages.success(request, f"A test is on its way to “{destination.name}”: its outcome appears in the log below.")
    return redirect("notifications:page")


@require_POST
def add_subscription(request):
    form = SubscriptionForm(request.POST, user=request.user)
    if not form.is_valid():
        messages.error(request, "The subscription was not added; see below why.")
        return render(request, "notifications/page.html", _page_context(request, subscription_form=form), status=400)
    subscription = form.save()
    messages.success(request, f"Subscribed “{subscription.destination.name}” to {subscription.describe()}.")
    return redirect("notifications:page")


@require_POST
def delete_subscription(request, pk: int):
    mine = Subscription.objects.filter(pk=pk, destination__in=Destination.objects.managed_by(request.user))
    if not mine.delete()[0]:
        messages.error(request, "That subscription is not yours to delete, or is gone already; nothing was changed.")
    else:
        messages.success(request, "Unsubscribed.")
    return redirect("notifications:page")


@require_POST
def watch(request, pk: int):
    """The detail page's Watch: subscribe one of the user's own destinations to this batch, or to its job."""
    batch = access.visible_batches(request.user).filter(pk=pk).select_related("connection").first()
    if batch is None:
        raise Http404("There is no such batch.")
    back = batch_path(batch)
    destination = Destination.objects.filter(user=request.user, pk=_number(request.POST.get("destination"))).first()
    if destination is None:
        messages.error(request, "Choose one of your destinations (add one on the Notifications page); nothing changed.")
        return redirect(back)
    whole_job = request.POST.get("what") == "job"
    job = job_of(batch) if whole_job else ""
    existing = Subscription.objects.filter(destination=destination)
    existing = (
        existing.filter(scope=Scope.JOB, job=job, connection=batch.connection)
        if whole_job
        else existing.filter(scope=Scope.BATCH, batch=batch)
    )
    if existing.exists():
        messages.info(request, f"“{destination.name}” already watches this {'job' if whole_job else 'batch'}.")
        return redirect(back)
    Subscription.objects.create(
        destination=destination,
        created_by=request.user,
        scope=Scope.JOB if whole_job else Scope.BATCH,
        batch=None if whole_job else batch,
        job=job,
        connection=batch.connection,
    )
    what = f"job {job}" if whole_job else f"batch {batch.batch_id}"
    messages.success(request, f"Watching {what}: “{destination.name}” hears when it finishes, fails or is stuck.")
    return redirect(back)


def _number(raw) -> int:
    return int(raw) if isinstance(raw, str) and raw.isdigit() and len(raw) < 18 else 0
