"""Saved views: a named list or results URL, with its filters, search and sort, kept for a user or shared with a team.

A saved view is only ever a link: opening it is opening the URL, with the viewer's own permissions. Its URL is
checked when it is saved: a path of this dashboard's list or of a results page, and a query of at most a kilobyte,
without the page number.
"""

from urllib.parse import urlsplit

from django.contrib import messages
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.http import QueryDict
from django.shortcuts import redirect, render
from django.urls import Resolver404, resolve
from django.views.decorators.http import require_POST, require_safe

from batches import access
from batches.models import SavedView

SAVEABLE = ("batches:list", "results:list")
MAX_QUERY = 800
MAX_NAME = 80


def _saveable_url(raw: str) -> str:
    """The path and query to save, or "" if `raw` is not a list or results URL of this dashboard."""
    if not raw.startswith("/") or raw.startswith("//") or len(raw) > 2000:
        return ""
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc:
        return ""
    try:
        match = resolve(parts.path)
    except Resolver404:
        return ""
    if match.view_name not in SAVEABLE:
        return ""
    query = QueryDict(parts.query, mutable=True)
    query.pop("page", None)
    encoded = query.urlencode()
    if len(encoded) > MAX_QUERY:
        return ""
    return parts.path + (f"?{encoded}" if encoded else "")


def _clean_name(raw: str) -> str:
    printable = "".join(character if character.isprintable() else " " for character in raw)
    return " ".join(printable.split())[:MAX_NAME]


def _back(url: str):
    return redirect(url or "batches:list")


@require_POST
def save_view(request):
    """Save the page the form was on under a name; an odd URL, name or team changes nothing and says why."""
    url = _saveable_url(request.POST.get("url", ""))
    name = _clean_name(request.POST.get("name", ""))
    if not url:
        messages.error(request, "Only the list and results pages can be saved as views; nothing was saved.")
        return _back("")
    if not name:
        messages.error(request, "A saved view needs a name; nothing was saved.")
        return _back(url)
    team = None
    if team_id := request.POST.get("team", ""):
        team = Group.objects.filter(pk=team_id if team_id.isdigit() else 0, user=request.user).first()
        if team is None:
            messages.error(request, "You can share a view only with a team you belong to; nothing was saved.")
            return _back(url)
    try:
        with transaction.atomic():
            SavedView.objects.create(owner=request.user, name=name, url=url, team=team)
    except IntegrityError:
        messages.error(request, f"You already have a view named “{name}”; nothing was saved.")
        return _back(url)
    shared = f", shared with {team.name}" if team else ""
    messages.success(request, f"Saved “{name}”{shared}: it is in the navigation.")
    return _back(url)


@require_safe
def saved_views(request):
    """The views the user can open, with Delete on their own."""
    views = access.saved_views(request.user)
    return render(request, "batches/saved_views.html", {"views": views})


@require_POST
def delete_view(request, pk: int):
    deleted, _ = SavedView.objects.filter(pk=pk, owner=request.user).delete()
    if deleted:
        messages.success(request, "The saved view was deleted.")
    else:
        messages.error(request, "That saved view is not yours to delete, or is gone already; nothing was changed.")
    return redirect("batches:saved_views")
