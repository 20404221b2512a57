"""The form that makes a share link: a name, how long it works, and what it opens beyond the batch's page."""

from __future__ import annotations

from datetime import timedelta

from django import forms

from batches.log_format import one_line
from sharing.models import NAME_MAX_CHARS

# From SHORTEST to LONGEST (sharing.models); the value is in hours.
LIFETIMES = [
    (1, "1 hour"),
    (8, "8 hours"),
    (24, "1 day"),
    (72, "3 days"),
    (168, "7 days"),
    (336, "14 days"),
    (720, "30 days"),
]
DEFAULT_LIFETIME = 24


class ShareLinkForm(forms.Form):
    name = forms.CharField(
        max_length=NAME_MAX_CHARS,
        required=False,
        help_text="Optional: whom it is for. Shown in the list of links and the audit log, never to its readers.",
    )
    hours = forms.TypedChoiceField(
        label="Works for", choices=LIFETIMES, coerce=int, initial=DEFAULT_LIFETIME, empty_value=None
    )
    allow_results = forms.BooleanField(label="Include its results (the table and each request)", required=False)
    allow_exports = forms.BooleanField(label="Allow CSV and JSONL exports of the results", required=False)

    def clean_name(self) -> str:
        return one_line(self.cleaned_data["name"]).strip()

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("allow_exports") and not cleaned.get("allow_results"):
            self.add_error("allow_exports", "Exports are of the results: include the results to allow them.")
        return cleaned

    @property
    def lifetime(self) -> timedelta:
        return timedelta(hours=self.cleaned_data["hours"])
