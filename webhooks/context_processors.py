"""`webhooks` on every page: the receiver's status, read lazily (only a page that shows it runs its one query)."""

from django.utils.functional import SimpleLazyObject

from webhooks.status import receiver_status


def webhooks(request):
    return {"webhooks": SimpleLazyObject(receiver_status)}
