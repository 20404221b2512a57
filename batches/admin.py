"""The Django admin: the cache read-only (batches, snapshots and reactions, for staff who need to look underneath),
and the connections, where those not defined by the configuration are made and their keys stored encrypted."""

import json
import os

from django import forms
from django.conf import settings
from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from batches import connection_file, events, secrets
from batches.converters import detail_url
from batches.models import (
    DEFAULT_CONNECTION,
    Batch,
    BatchSnapshot,
    Connection,
    ConnectionKind,
    ConnectionSource,
    Reaction,
)


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


class ConnectionForm(forms.ModelForm):
    """A connection made in the admin. Its key and webhook secret are write-only: never rendered back (not even on a
    form sent back with errors), kept encrypted with BATCHBOARD_ENCRYPTION_KEY (batches.secrets); left blank when
    editing, the stored one stays."""

    api_key = forms.CharField(
        label="API key",
        required=False,
        max_length=1000,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Sent only as a header, stored encrypted, never shown again. Leave blank to keep the stored key.",
    )
    webhook_secret = forms.CharField(
        label="Webhook secret",
        required=False,
        max_length=1000,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Optional: the endpoint's signing secret (whsec_...), stored encrypted. Blank keeps the stored one.",
    )
    remove_webhook_secret = forms.BooleanField(label="Remove the stored webhook secret", required=False)

    class Meta:
        model = Connection
        fields = [
            "name",
            "slug",
            "kind",
            "base_url",
            "organization",
            "project",
            "budget_per_minute",
            "monthly_budget",
            "archive",
            "paused",
            "open_to_everyone",
            "view_teams",
            "cancel_teams",
            "create_teams",
        ]
        help_texts = {
            "slug": "Letters, digits and hyphens; it names the connection in URLs (?connection=...).",
            "base_url": "https://api.openai.com/v1; for Azure OpenAI the resource's "
            "https://<resource>.openai.azure.com/openai/v1/",
            "organization": "OpenAI only: sent as OpenAI-Organization.",
            "project": "OpenAI only: sent as OpenAI-Project.",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["base_url"].required = True
        self.fields["base_url"].assume_scheme = "https"
        if self.instance.pk is None:
            self.fields["api_key"].required = True
            self.fields["api_key"].help_text = "Sent only as a header, stored encrypted, never shown again."
            del self.fields["remove_webhook_secret"]
        elif not self.instance.webhook_secret_encrypted:
            del self.fields["remove_webhook_secret"]

    def clean_slug(self):
        slug = self.cleaned_data["slug"]
        if not connection_file.SLUG.fullmatch(slug):
            raise forms.ValidationError("Letters, digits and hyphens only (at most 50), starting with one.")
        if slug.lower() == DEFAULT_CONNECTION:
            raise forms.ValidationError("“default” is the connection of the OPENAI_* settings; choose another slug.")
        return slug

    def clean_webhook_secret(self):
        secret = self.cleaned_data["webhook_secret"].strip()
        if secret and not secret.startswith("whsec_"):
            raise forms.ValidationError("A webhook secret starts with whsec_, as the API shows it.")
        return secret

    def clean(self):
        cleaned = super().clean()
        kind, base_url = cleaned.get("kind"), cleaned.get("base_url")
        if kind and base_url and (problem := connection_file.url_problem(kind, base_url)):
            problem = problem.removeprefix("base_url ")
            self.add_error("base_url", f"{problem[0].upper()}{problem[1:]}.")
        for field in ("organization", "project"):
            if kind and kind != ConnectionKind.OPENAI and cleaned.get(field):
                self.add_error(field, f"Only an OpenAI connection sends it; a {kind} connection sends none.")
        for field in ("api_key", "webhook_secret"):
            if cleaned.get(field):
                try:
                    secrets.encrypt("")
                except secrets.Unreadable as exc:
                    self.add_error(field, f"It cannot be stored: {exc}")
        return cleaned

    def save(self, commit=True):
        connection = super().save(commit=False)
        connection.source = ConnectionSource.ADMIN
        connection.api_key_env = connection.webhook_secret_env = ""
        if self.cleaned_data.get("api_key"):
            connection.api_key_encrypted = secrets.encrypt(self.cleaned_data["api_key"].strip())
        if self.cleaned_data.get("remove_webhook_secret"):
            connection.webhook_secret_encrypted = ""
        if self.cleaned_data.get("webhook_secret"):
            connection.webhook_secret_encrypted = secrets.encrypt(self.cleaned_data["webhook_secret"])
        if commit:
            connection.save()
            self.save_m2m()
        return connection


_CONNECTION_FIELDS = (
    (None, {"fields": ("definition", "name", "slug", "kind", "base_url", "organization", "project")}),
    ("Budgets and results", {"fields": ("budget_per_minute", "monthly_budget", "archive")}),
    ("State", {"fields": ("paused", "configured", "last_webhook_at")}),
    ("Access", {"fields": ("open_to_everyone", "view_teams", "cancel_teams", "create_teams")}),
)
# What the admin may change of a connection the configuration defines: the single-key settings say nothing of access
# or pausing, so the default connection's are set here; the connections file says everything of its connections.
_SETTINGS_EDITABLE = ("paused", "open_to_everyone", "view_teams", "cancel_teams", "create_teams")


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):
    """Connections: those of the admin are edited here; those of the connections file are shown read-only (change the
    file); of the default connection (the OPENAI_* settings) only pausing and access are set here."""

    form = ConnectionForm
    list_display = ("name", "slug", "kind", "defined_by", "base_url", "configured", "paused")
    list_filter = ("source", "kind", "configured", "paused")
    search_fields = ("name", "slug")
    ordering = ("name", "slug")
    filter_horizontal = ("view_teams", "cancel_teams", "create_teams")

    def get_fieldsets(self, request, obj=None):
        if obj is not None and obj.source != ConnectionSource.ADMIN:
            return (*_CONNECTION_FIELDS[:1], ("Key", {"fields": ("key_state",)}), *_CONNECTION_FIELDS[1:])
        key_fields = ("api_key", "webhook_secret") if obj is None else ("key_state", "api_key", "webhook_secret")
        if obj is not None and obj.webhook_secret_encrypted:
            key_fields += ("remove_webhook_secret",)
        first = (None, {"fields": _CONNECTION_FIELDS[0][1]["fields"][1:]}) if obj is None else _CONNECTION_FIELDS[0]
        return (first, ("Key", {"fields": key_fields}), *_CONNECTION_FIELDS[1:])

    def get_readonly_fields(self, request, obj=None):
        shown = ("definition", "key_state", "configured", "last_webhook_at")
        if obj is None or obj.source == ConnectionSource.ADMIN:
            return shown
        fields = [name for _title, options in _CONNECTION_FIELDS for name in options["fields"]]
        if obj.source == ConnectionSource.SETTINGS:
            return tuple(dict.fromkeys([*shown, *(name for name in fields if name not in _SETTINGS_EDITABLE)]))
        return tuple(dict.fromkeys([*shown, *fields]))

    def get_form(self, request, obj=None, **kwargs):
        if obj is not None and obj.source != ConnectionSource.ADMIN:
            kwargs["form"] = forms.ModelForm  # no key fields: its key lives where its definition says
        return super().get_form(request, obj, **kwargs)

    def has_change_permission(self, request, obj=None):
        if obj is not None and obj.source == ConnectionSource.FILE:
            return False  # shown read-only, with where to change it
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        # One with batches cannot go anyway (they keep it, PROTECT); one of the configuration comes back at restart.
        if obj is not None and obj.source != ConnectionSource.ADMIN:
            return False
        return super().has_delete_permission(request, obj)

    # Made, changed and deleted connections go to the audit log (the audit app receives batches.events.user_acted)
    # with the fields that changed: the admin's change message holds the fields' labels, never a value, so a key or
    # webhook secret is named as set, never shown.
    def log_addition(self, request, obj, message):
        keys = ["API key" if obj.api_key_encrypted else "", "webhook secret" if obj.webhook_secret_encrypted else ""]
        detail = f"{obj.kind} at {obj.base_url}" + "".join(f"; {name} set" for name in keys if name)
        events.note_action(
            request, events.CONNECTION_ADD, events.OK, target=_audit_target(obj), detail=detail, connection=obj
        )
        return super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        changed = [
            label for part in message if isinstance(part, dict) for label in part.get("changed", {}).get("fields", [])
        ]
        if changed:
            detail = "changed " + ", ".join(changed)
            events.note_action(
                request, events.CONNECTION_CHANGE, events.OK, target=_audit_target(obj), detail=detail, connection=obj
            )
        return super().log_change(request, obj, message)

    def log_deletions(self, request, queryset):
        for connection in queryset:
            events.note_action(
                request, events.CONNECTION_DELETE, events.OK, target=_audit_target(connection), connection=connection
            )
        return super().log_deletions(request, queryset)

    @admin.display(description="Defined by", ordering="source")
    def defined_by(self, obj):
        return _definition(obj, short=True)

    @admin.display(description="Definition")
    def definition(self, obj):
        return _definition(obj, short=False)

    @admin.display(description="Key")
    def key_state(self, obj):
        """Where the key is and whether it is there, never any of it."""
        if obj.source == ConnectionSource.SETTINGS:
            return "OPENAI_API_KEY is set." if settings.OPENAI_API_KEY else "OPENAI_API_KEY is not set."
        if obj.source == ConnectionSource.FILE:
            state = "set" if obj.api_key_env and _env_is_set(obj.api_key_env) else "not set"
            return f"Read from the environment variable {obj.api_key_env} ({state})."
        key = "Stored encrypted." if obj.api_key_encrypted else "None stored."
        secret = " A webhook secret is stored encrypted." if obj.webhook_secret_encrypted else ""
        return key + secret


def _audit_target(connection: Connection) -> str:
    return f"connection {connection.slug}"


def _env_is_set(name: str) -> bool:
    return bool(os.environ.get(name, "").strip())


def _definition(connection: Connection, *, short: bool) -> str:
    if connection.source == ConnectionSource.SETTINGS:
        if short:
            return "OPENAI_* settings"
        return (
            "Defined by the OPENAI_* settings (OPENAI_API_KEY, OPENAI_BASE_URL, ...): change them in the environment. "
            "Only pausing it and who may see it are set here."
        )
    if connection.source == ConnectionSource.FILE:
        path = settings.BATCHBOARD_CONNECTIONS
        if short:
            return "connections file"
        if not connection.configured or not path:
            return "Defined in the connections file once; no longer there, so it is kept for its history only."
        return f"Defined in {path}: change it there and restart. It is read-only here."
    return "admin" if short else "Made in the admin: edit it here."
