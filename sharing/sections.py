"""The detail page's "Share links" card (batches.sections): the batch's working links, who made them, until when,
their Revoke buttons, and the form that makes one. In the side column: the full page only, never polled."""

from __future__ import annotations

from django.conf import settings

from batches import sections
from sharing.forms import ShareLinkForm
from sharing.models import MAX_ACTIVE_PER_BATCH, ShareLink


def links_context(request, batch) -> dict:
    if not settings.BATCHBOARD_PUBLIC_LINKS:
        return {"enabled": False, "links": [], "batch": batch}
    links = list(ShareLink.objects.active().for_batch(batch)[:MAX_ACTIVE_PER_BATCH])
    for link in links:
        link.batch = batch  # read already: may_be_revoked_by asks its connection
        link.can_revoke = link.may_be_revoked_by(request.user)
    return {
        "enabled": True,
        "batch": batch,
        "links": links,
        "full": len(links) >= MAX_ACTIVE_PER_BATCH,
        "form": ShareLinkForm(auto_id="share-%s"),
    }


def links_key(context: dict):
    return tuple((link.pk, link.can_revoke) for link in context["links"])


LINKS = sections.Section(
    name="sharing.links",
    slot=sections.DETAIL_ASIDE,
    template="sharing/_links_card.html",
    context=links_context,
    key=links_key,
)
