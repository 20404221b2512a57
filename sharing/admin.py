"""Share links in the admin: every working and ended link, whose batch, who made it; administrators may revoke any."""

from django.contrib import admin, messages

from audit.log import record
from audit.models import Action, Outcome
from sharing.models import ShareLink


@admin.register(ShareLink)
class ShareLinkAdmin(admin.ModelAdmin):
    list_display = ("label", "batch", "created_by_name", "created_at", "expires_at", "revoked_at", "allow_results")
    list_filter = ("allow_results", "allow_exports")
    search_fields = ("batch__batch_id", "name", "created_by_name")
    list_select_related = ("batch",)
    date_hierarchy = "created_at"
    actions = ["revoke"]
    # Made on the batch's page only (its token is shown there, once); here they are read and revoked.
    readonly_fields = [field.name for field in ShareLink._meta.fields]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Revoke the selected links", permissions=["change"])
    def revoke(self, request, queryset):
        ended = 0
        for link in queryset.active().select_related("batch"):
            if link.revoke(request.user):
                ended += 1
                record(request, Action.SHARE_REVOKE, Outcome.OK, batch_id=link.batch.batch_id, target=link.label)
        self.message_user(request, f"{ended} link(s) revoked.", messages.SUCCESS)
