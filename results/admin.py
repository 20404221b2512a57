"""Read-only admin for results kept locally: what is kept, its state and summary."""

from django.contrib import admin

from results.models import ResultArchive


@admin.register(ResultArchive)
class ResultArchiveAdmin(admin.ModelAdmin):
    list_display = ["batch", "state", "archived_at", "stored_bytes", "upstream_deleted_at", "pruned_at"]
    list_filter = ["state", "archived_at"]
    search_fields = ["batch__batch_id"]
    list_select_related = ["batch"]
    readonly_fields = [field.name for field in ResultArchive._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
