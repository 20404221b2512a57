from django.contrib import admin

from accounts.models import ManagedGroup, OidcIdentity


@admin.register(OidcIdentity)
class OidcIdentityAdmin(admin.ModelAdmin):
    list_display = ["subject", "user", "issuer", "created_at", "last_sign_in_at"]
    search_fields = ["subject", "user__username", "user__email"]
    raw_id_fields = ["user"]
    readonly_fields = ["created_at", "last_sign_in_at"]


@admin.register(ManagedGroup)
class ManagedGroupAdmin(admin.ModelAdmin):
    list_display = ["group", "since"]
    search_fields = ["group__name"]
    raw_id_fields = ["group"]
