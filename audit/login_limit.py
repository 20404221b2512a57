"""Password spraying: a limit on the failed logins one address makes, whatever user names it tries.

django-axes locks a (user name, address) pair after DJANGO_LOGIN_FAILURE_LIMIT failures, and one guess at each of
many names never reaches that. So the failed logins an address made in the last hour are counted as well, and past
BATCHBOARD_LOGIN_FAILURES_PER_ADDRESS the address is refused, right password or not, the way a locked pair is:
django-axes' lockout page, status 429. Other addresses are not affected.

The count is read from the audit log, which already keeps one row per failed login with its address and time:
every process writes there, so the count is shared, and each failure is an insert, never a read-modify-write that
parallel requests could lose. The count stops at the limit, so an address that keeps trying costs a bounded query.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from audit.client import client_ip
from audit.models import Action, AuditEvent

WINDOW = timedelta(hours=1)


def recent_failures(ip: str) -> int:
    """Failed logins from this address in the last WINDOW, counted up to the limit at most."""
    limit = settings.BATCHBOARD_LOGIN_FAILURES_PER_ADDRESS
    since = timezone.now() - WINDOW
    return AuditEvent.objects.filter(ip=ip, action=Action.LOGIN_FAILED, at__gte=since).values("pk")[:limit].count()


def address_locked(request) -> bool:
    ip = client_ip(request)
    return ip is not None and recent_failures(ip) >= settings.BATCHBOARD_LOGIN_FAILURES_PER_ADDRESS


class AddressLimitBackend:
    """An authentication backend that logs nobody in: listed before ModelBackend, it refuses a locked address.

    Django answers the PermissionDenied as a failed login (user_login_failed, so the refusal is counted and audited);
    `axes_locked_out` makes django-axes' middleware answer with its lockout page.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is not None and address_locked(request):
            request.axes_locked_out = True
            request.login_address_locked = True
            raise PermissionDenied("Too many failed logins from this address.")
        return None
