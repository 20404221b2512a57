"""The viewer's time zone: UTC unless they pick their own, kept for the user (Preference) and copied into their
session at each login (see TimeZoneMiddleware, which reads only the session)."""

import zoneinfo

from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods

from batches.models import Preference

SESSION_KEY = "time_zone"
DEFAULT = "UTC"


def choices() -> list[str]:
    return sorted(zone for zone in zoneinfo.available_timezones() if "/" in zone or zone == DEFAULT)


@require_http_methods(["GET", "HEAD", "POST"])
def time_zone(request):
    """GET shows the choice; POST stores it (an unknown zone changes nothing and says so)."""
    next_url = request.POST.get("next") or request.GET.get("next") or ""
    if not (next_url.startswith("/") and url_has_allowed_host_and_scheme(next_url, allowed_hosts=None)):
        next_url = ""
    error = ""
    if request.method == "POST":
        chosen = request.POST.get("time_zone", "")
        if chosen in choices():
            if chosen == DEFAULT:
                request.session.pop(SESSION_KEY, None)
            else:
                request.session[SESSION_KEY] = chosen
            if request.user.is_authenticated:
                Preference.objects.update_or_create(
                    user=request.user, defaults={"time_zone": "" if chosen == DEFAULT else chosen}
                )
            return redirect(next_url or "batches:list")
        error = f"“{chosen[:60]}” is not a time zone batchboard knows; nothing was changed."
    current = request.session.get(SESSION_KEY, DEFAULT)
    context = {"zones": choices(), "current": current, "next": next_url, "error": error}
    return render(request, "batches/time_zone.html", context, status=400 if error else 200)


def restore_on_login(sender, request, user, **kwargs):
    """A user_logged_in receiver: the zone the user picked in an earlier session applies again."""
    if request is None or not hasattr(request, "session"):
        return
    chosen = Preference.objects.filter(user=user).values_list("time_zone", flat=True).first()
    if chosen and chosen in choices():
        request.session[SESSION_KEY] = chosen
