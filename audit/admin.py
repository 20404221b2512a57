"""The audit log in the admin: read-only, filterable by action, outcome, connection and date, searchable by user and
batch. A staff user reads only the events of the connections they may view (and those of none: logins, accounts)."""

from django.contrib import admin

from audit.models import AuditEvent
from batches.models import Connection


class ConnectionFilter(admin.SimpleListFilter):
    """By connection, offering only those the staff user may view (never the names of the others)."""

    title = "connection"
    parameter_name = "connection"

    def lookups(self, request, model_admin):
        return [(str(connection.pk), connection.name) for connection in Connection.objects.viewable_by(request.user)]

    def queryset(self, request, queryset):
        value = self.value()
        return queryset.filter(connection_id=value) if value and value.isdigit() else queryset


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ("at", "username", "ip", "action", "connection", "batch_id", "target", "outcome")
    list_filter = ("action", "outcome", ConnectionFilter, "at")
    list_select_related = ("connection",)
    date_hierarchy = "at"
    search_fields = ("username", "batch_id", "target", "ip")
    search_help_text = "User name, batch id, file or IP."
    readonly_fields = [field.name for field in AuditEvent._meta.fields]

    def get_queryset(self, request):
        return super().get_queryset(request).visible_to(request.user)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
