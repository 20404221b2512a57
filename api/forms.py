from datetime import timedelta

from django import forms
from django.utils import timezone

from api.models import MAX_LIFETIME, SCOPES

EXPIRY_DAYS = [(7, "7 days"), (30, "30 days"), (90, "90 days"), (365, "1 year")]


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=60, help_text="What uses it, such as “ci-deploy”: the audit log names it.")
    scopes = forms.MultipleChoiceField(
        choices=[(scope, scope) for scope in SCOPES],
        widget=forms.CheckboxSelectMultiple,
        help_text="It can never do more than your teams let you do.",
    )
    expires_days = forms.TypedChoiceField(
        choices=EXPIRY_DAYS, coerce=int, initial=90, label="Expires after", help_text="At most a year."
    )

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name.isprintable():
            raise forms.ValidationError("Use printable characters only.")
        return name

    @property
    def expires_at(self):
        return expiry_in(self.cleaned_data["expires_days"])


def expiry_in(days: int):
    return timezone.now() + min(timedelta(days=days), MAX_LIFETIME)
