"""`webhooks` on every page: the receivers of the connections the viewer sees, read lazily (only a page that shows
them reads them, from the connection rows the request has already)."""

from django.utils.functional import SimpleLazyObject

from webhooks.status import visible_receivers


def webhooks(request):
    return {"webhooks": SimpleLazyObject(lambda: visible_receivers(request.user))}
