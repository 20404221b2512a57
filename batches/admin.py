"""Read-only Django admin for the cache: batches, snapshots and reactions, for staff who need to look underneath."""

import json

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from batches.converters import detail_url
from batches.models import Batch, BatchSnapshot, Reaction


def _pretty_json(value) -> str:
    return format_html('<pre class="batchboard-json">{}</pre>', json.dumps(value, indent=2, sort_keys=True))


def _request_counts(obj) -> str:
    return f"{obj.completed_requests:,} / {obj.failed_requests:,} / {obj.total_requests:,}"


class ReadOnlyAdmin(admin.ModelAdmin):
    """The cache mirrors the API; editing it here would only show users something the API never said."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Batch)
class BatchAdmin(ReadOnlyAdmin):
    list_display = ("batch_id", "status", "endpoint", "model", "requests", "created_at", "finished_at")
    list_filter = ("status", "is_terminal", "lineage_state", "endpoint", "created_at", "finished_at")
    date_hierarchy = "created_at"
    search_fields = ("batch_id", "search_text")
    search_help_text = "Batch id, file id or metadata text."
    ordering = ("-created_at", "-batch_id")
    show_full_result_count = False
    fieldsets = (
        (None, {"fields": ("batch_id", "dashboard_link", "status", "is_terminal", "endpoint", "model")}),
        ("Requests", {"fields": ("total_requests", "completed_requests", "failed_requests")}),
        ("Files", {"fields": ("input_file_id", "output_file_id", "error_file_id")}),
        ("Times", {"fields": ("created_at", "expires_at", "finished_at")}),
        ("Cache", {"fields": ("first_seen_at", "last_seen_at", "last_changed_at", "snapshots_link")}),
        ("Cancel requests", {"fields": ("cancel_requested_at", "cancel_requested_by")}),
        (
            "Lineage (claimed by the metadata)",
            {"fields": ("retry_of", "job", "attempt", "lineage_state", "lineage_note")},
        ),
        ("Metadata", {"fields": ("pretty_metadata",)}),
        ("Latest payload", {"fields": ("pretty_payload",)}),
    )
    readonly_fields = ("dashboard_link", "snapshots_link", "pretty_metadata", "pretty_payload")

    def get_queryset(self, request):
        # The list never shows the payload; the change view loads it with one more query.
        return super().get_queryset(request).defer("payload", "search_text")

    @admin.display(description="Requests (completed / failed / total)", ordering="total_requests")
    def requests(self, obj):
        return _request_counts(obj)

    @admin.display(description="Dashboard")
    def dashboard_link(self, obj):
        url = detail_url(obj.batch_id)
        return format_html('<a href="{}">Open in batchboard</a>', url) if url else "—"

    @admin.display(description="Snapshots")
    def snapshots_link(self, obj):
        url = reverse("admin:batches_batchsnapshot_changelist") + f"?batch__id__exact={obj.pk}"
        return format_html('<a href="{}">{} snapshot(s)</a>', url, obj.snapshots.count())

    @admin.display(description="Metadata")
    def pretty_metadata(self, obj):
        return _pretty_json(obj.metadata)

    @admin.display(description="Payload")
    def pretty_payload(self, obj):
        return _pretty_json(obj.payload)


@admin.register(BatchSnapshot)
class BatchSnapshotAdmin(ReadOnlyAdmin):
    list_display = ("batch", "observed_at", "status", "requests")
    list_filter = ("status", "batch__endpoint", "observed_at")
    list_select_related = ("batch",)
    date_hierarchy = "observed_at"
    search_fields = ("batch__batch_id", "batch__search_text")
    search_help_text = "Batch id, file id or metadata text."
    raw_id_fields = ("batch",)
    ordering = ("-observed_at", "-id")
    show_full_result_count = False
    fields = (
        "batch",
        "observed_at",
        "status",
        "total_requests",
        "completed_requests",
        "failed_requests",
        "payload_hash",
        "pretty_payload",
    )
    readonly_fields = ("pretty_payload",)

    def get_queryset(self, request):
        # Snapshots can number in the hundreds of thousands: keep payloads out of the list query.
        return super().get_queryset(request).defer("payload", "batch__payload", "batch__search_text")

    @admin.display(description="Payload")
    def pretty_payload(self, obj):
        return _pretty_json(obj.payload)

    @admin.display(description="Requests (completed / failed / total)")
    def requests(self, obj):
        return _request_counts(obj)


@admin.register(Reaction)
class ReactionAdmin(ReadOnlyAdmin):
    """What followed each batch (results kept, retries): whether it ran, how often it was tried, and why it failed."""

    list_display = ("step", "batch", "attempt", "state", "tries", "run_after", "finished_at")
    list_filter = ("state", "step")
    list_select_related = ("batch",)
    search_fields = ("batch__batch_id", "error")
    search_help_text = "Batch id, or words of the failure."
    ordering = ("-created_at",)
