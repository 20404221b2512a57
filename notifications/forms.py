"""The Notifications page's forms: bounded fields, clear messages, and choices limited to what the user may use."""

from __future__ import annotations

import apprise
from django import forms
from django.core.validators import EmailValidator, URLValidator

from batches import access, secrets, services
from batches.models import Batch
from notifications.models import (
    EVENT_FIELDS,
    NAME_LENGTH,
    TARGET_LENGTH,
    Destination,
    Kind,
    Scope,
    Subscription,
    managed_teams,
    new_webhook_secret,
)

MINE = "me"
NO_KEY = (
    "Destinations hold secrets (tokens in their URLs), so they are stored encrypted, and no encryption key is set: "
    "ask an administrator to set BATCHBOARD_ENCRYPTION_KEY."
)


class DestinationForm(forms.Form):
    name = forms.CharField(max_length=NAME_LENGTH)
    kind = forms.ChoiceField(choices=Kind.choices)
    target = forms.CharField(
        max_length=TARGET_LENGTH,
        label="URL or address",
        help_text="An apprise URL (slack://…, msteams://…, discord://…, json://host/path), an email address, or the "
        "https:// URL a signed webhook goes to. Stored encrypted; only its scheme and host are shown again.",
        widget=forms.PasswordInput(render_value=False),
    )
    owner = forms.ChoiceField(label="For")
    digest_minutes = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=1440,
        initial=0,
        label="Digest every (minutes)",
        help_text="0 sends each event at once; more gathers what happens into one message per that many minutes.",
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        teams = list(managed_teams(user).order_by("name"))
        self.teams = {str(team.pk): team for team in teams}
        self.fields["owner"].choices = [(MINE, "Me"), *((str(team.pk), f"Team {team.name}") for team in teams)]

    def clean_target(self):
        target = self.cleaned_data["target"].strip()
        kind = self.data.get("kind")
        if kind == Kind.EMAIL:
            EmailValidator(message="Enter an email address, such as oncall@example.com.")(target)
        elif kind == Kind.SIGNED_WEBHOOK:
            URLValidator(schemes=["http", "https"], message="Enter the http(s):// URL the webhook goes to.")(target)
        elif apprise.Apprise.instantiate(target) is None:
            raise forms.ValidationError(
                "apprise does not recognise this URL: see its list of services (slack://, msteams://, json://…)."
            )
        return target

    def clean(self):
        cleaned = super().clean()
        if not secrets.can_encrypt():
            raise forms.ValidationError(NO_KEY)
        return cleaned

    def save(self) -> tuple[Destination, str]:
        """The new destination, and its signed webhook secret ("" for other kinds): shown once, never again."""
        owner = self.cleaned_data["owner"]
        destination = Destination(
            name=self.cleaned_data["name"],
            kind=self.cleaned_data["kind"],
            user=self.user if owner == MINE else None,
            team=self.teams.get(owner),
            digest_minutes=self.cleaned_data.get("digest_minutes") or 0,
        )
        destination.set_target(self.cleaned_data["target"])
        secret = ""
        if destination.kind == Kind.SIGNED_WEBHOOK:
            secret = new_webhook_secret()
            destination.secret_encrypted = secrets.encrypt(secret)
        destination.save()
        return destination, secret


class SubscriptionForm(forms.ModelForm):
    destination = forms.ModelChoiceField(queryset=Destination.objects.none())
    batch_id = forms.CharField(max_length=services.ID_LENGTH, required=False, label="Batch id")
    metadata = forms.CharField(max_length=600, required=False, label="Metadata key:value")

    class Meta:
        model = Subscription
        fields = [
            "destination",
            "scope",
            "connection",
            "job",
            "endpoint",
            "model",
            *(name for name, _label in EVENT_FIELDS),
            "failure_percent",
        ]
        labels = dict(EVENT_FIELDS)

    field_order = ["destination", "scope", "batch_id", "job", "connection", "metadata", "endpoint", "model"]

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["destination"].queryset = Destination.objects.managed_by(user)
        viewable = [connection.pk for connection in access.connections(user)]
        self.fields["connection"].queryset = self.fields["connection"].queryset.filter(pk__in=viewable)
        self.fields["connection"].required = False
        self.fields["failure_percent"].max_value = 100
        self.fields["failure_percent"].validators.append(_at_most_100)

    def clean(self):
        cleaned = super().clean()
        scope = cleaned.get("scope")
        connection = cleaned.get("connection")
        if scope == Scope.CONNECTION and connection is None:
            self.add_error("connection", "Choose the connection whose batches to follow.")
        if scope == Scope.JOB and (connection is None or not cleaned.get("job")):
            self.add_error("job", "Name the job (its original batch's id) and its connection.")
        if scope == Scope.BATCH:
            batch = self._visible_batch(cleaned.get("batch_id", ""), connection)
            if batch is None:
                self.add_error("batch_id", "There is no such batch among those you may see.")
            self.batch = batch
        key, separator, value = cleaned.get("metadata", "").strip().partition(":")
        if scope == Scope.FILTER and cleaned.get("metadata", "").strip() and not (separator and key and value):
            self.add_error("metadata", "Write the metadata as key:value, such as project:search.")
        self.metadata_pair = (key.strip()[:64], value.strip()[:512]) if separator else ("", "")
        return cleaned

    def _visible_batch(self, batch_id: str, connection) -> Batch | None:
        batches = access.visible_batches(self.user).filter(batch_id=batch_id.strip())
        if connection is not None:
            batches = batches.filter(connection=connection)
        found = list(batches[:2])
        return found[0] if len(found) == 1 else None

    def save(self, commit=True):
        subscription = super().save(commit=False)
        subscription.created_by = self.user
        subscription.batch = getattr(self, "batch", None) if subscription.scope == Scope.BATCH else None
        subscription.metadata_key, subscription.metadata_value = self.metadata_pair
        if commit:
            subscription.save()
        return subscription


def _at_most_100(value):
    if value is not None and value > 100:
        raise forms.ValidationError("A share of the requests: at most 100 %.")
