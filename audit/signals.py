"""Logins, logouts, failed logins and lockouts (django-axes' of a user name and IP, audit.login_limit's of an IP), and
what users do to batches (batches.events.user_acted: cancel, create, download) go to the audit log."""

from axes.signals import user_locked_out
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from audit.log import record
from audit.login_limit import address_locked
from audit.models import Action, Outcome
from batches.events import user_acted


def _login_path(request) -> str:
    return request.path if request is not None else ""


@receiver(user_logged_in, dispatch_uid="audit-login")
def _logged_in(sender, request, user, **kwargs):
    record(request, Action.LOGIN, Outcome.OK, username=user.get_username(), target=_login_path(request))


@receiver(user_logged_out, dispatch_uid="audit-logout")
def _logged_out(sender, request, user, **kwargs):
    if user is not None:
        record(request, Action.LOGOUT, Outcome.OK, username=user.get_username())


@receiver(user_login_failed, dispatch_uid="audit-login-failed")
def _login_failed(sender, credentials, request=None, **kwargs):
    # `credentials` has the password already masked by Django; only the username is kept.
    username = str(credentials.get("username", ""))
    if getattr(request, "login_address_locked", False):
        detail = "refused: this IP is locked out (too many failed logins, whatever the username)"
    elif getattr(request, "axes_locked_out", False):
        detail = "refused: this username and IP are locked out"
    elif getattr(request, "login_refused_because", ""):
        # A sign-in the OpenID provider vouched for but batchboard refused (accounts.backends).
        detail = f"refused by single sign-on: {request.login_refused_because}"
    else:
        detail = "wrong username or password"
    record(request, Action.LOGIN_FAILED, Outcome.REFUSED, username=username, target=_login_path(request), detail=detail)
    if request is not None and not getattr(request, "login_address_locked", False) and address_locked(request):
        # This failure was the one that reached the limit: the IP is locked from the next attempt on.
        detail = "this IP, whatever the username"
        record(request, Action.LOCKOUT, Outcome.REFUSED, username=username, target=_login_path(request), detail=detail)


@receiver(user_locked_out, dispatch_uid="audit-lockout")
def _locked_out(sender, request, username, ip_address, **kwargs):
    record(request, Action.LOCKOUT, Outcome.REFUSED, username=str(username or ""), target=_login_path(request))


@receiver(user_acted, dispatch_uid="audit-user-acted")
def _user_acted(sender, request, action, outcome, batch_id="", target="", detail="", connection=None, **kwargs):
    record(
        request,
        Action(action),
        Outcome(outcome),
        batch_id=batch_id,
        target=target,
        detail=detail,
        connection=connection,
    )
