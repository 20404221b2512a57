"""The audit log in the admin: read-only, filterable by action, outcome and date, searchable by user and batch."""

from django.contrib import admin

from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ("at", "username", "ip", "action", "batch_id", "target", "outcome")
    list_filter = ("action", "outcome", "at")
    date_hierarchy = "at"
    search_fields = ("username", "batch_id", "target", "ip")
    search_help_text = "User name, batch id, file or IP."
    readonly_fields = [field.name for field in AuditEvent._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
