"""The client's IP address: the peer's, or the proxy's word for it only when the deploy says a proxy is in front."""

import ipaddress

from django.conf import settings


def _valid_ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return None


def client_ip(request) -> str | None:
    """The address the request came from.

    Behind a proxy (DJANGO_BEHIND_HTTPS_PROXY) it is the last X-Forwarded-For entry, the one the proxy itself added;
    entries before it come from the client and could be anything. Without a proxy the header is ignored, so nobody
    can pick the address they are throttled or logged under.
    """
    if settings.BEHIND_HTTPS_PROXY:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        address = _valid_ip(forwarded.rsplit(",", 1)[-1]) if forwarded else None
        if address:
            return address
    return _valid_ip(request.META.get("REMOTE_ADDR", "") or "")
