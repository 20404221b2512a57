from django.contrib import admin

from webhooks.models import Delivery, Refusals


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ("received_at", "connection", "event_type", "batch_id", "state", "tries", "processed_at")
    list_filter = ("connection", "state", "event_type")
    list_select_related = ("connection",)
    search_fields = ("webhook_id", "batch_id", "event_id")
    ordering = ("-received_at",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Refusals)
class RefusalsAdmin(admin.ModelAdmin):
    list_display = ("day", "connection", "count")
    list_filter = ("connection",)
    list_select_related = ("connection",)
    ordering = ("-day",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
