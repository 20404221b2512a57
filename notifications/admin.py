"""Read-only views of destinations (never their URL or secret: those are changed on the Notifications page) and of
the notifications with their attempts, for an administrator following a delivery."""

from django.contrib import admin

from notifications.models import Attempt, Destination, Notification


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Destination)
class DestinationAdmin(ReadOnly):
    list_display = ("name", "kind", "shown", "user", "team", "paused_at", "consecutive_failures")
    list_filter = ("kind", "team")
    list_select_related = ("user", "team")
    search_fields = ("name",)
    fields = (
        "name",
        "kind",
        "shown",
        "user",
        "team",
        "created_at",
        "paused_at",
        "consecutive_failures",
        "last_error",
        "send_due_at",
    )


class AttemptInline(admin.TabularInline):
    model = Attempt
    fields = ("at", "step", "ok", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Notification)
class NotificationAdmin(ReadOnly):
    list_display = ("created_at", "event", "batch", "connection", "destination", "state", "tries", "sent_at")
    list_filter = ("state", "event")
    list_select_related = ("batch", "connection", "destination")
    raw_id_fields = ("batch",)
    inlines = [AttemptInline]
