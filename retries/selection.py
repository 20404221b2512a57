"""Which lines of a batch a retry sends: a named choice, or the results page's current filter."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q
from django.http import QueryDict

from results.models import Outcome, ResultArchive, ResultFilter, ResultLine

# choice -> (label, the lines it selects)
CHOICES = {
    "unanswered": (
        "every line without an answer (failed, expired, cancelled or missing)",
        ~Q(outcome=Outcome.SUCCEEDED),
    ),
    "failed": ("every failed line", Q(outcome=Outcome.FAILED)),
    "unrun": ("every expired or cancelled line", Q(outcome__in=(Outcome.EXPIRED, Outcome.CANCELLED))),
    "missing": ("every missing line", Q(outcome=Outcome.MISSING)),
    # What automatic retries send: lines that may well succeed when sent again.
    "transient": (
        "every line that failed with 429 or a 5xx status, or expired",
        Q(outcome=Outcome.FAILED, status_code=429)
        | Q(outcome=Outcome.FAILED, status_code__gte=500)
        | Q(outcome=Outcome.EXPIRED),
    ),
}
FILTER = "filter"


@dataclass(frozen=True)
class RetrySelection:
    """A named choice, or FILTER with the results page's filter (which also covers a status, a code or an error
    group: `?status=429`, `?code=rate_limit_exceeded`, `?group=2`)."""

    choice: str
    result_filter: ResultFilter

    @classmethod
    def from_query(cls, query: QueryDict) -> RetrySelection | None:
        """None when the query names no valid selection (the page says so and changes nothing)."""
        choice = query.get("select", "").strip()
        result_filter = ResultFilter.from_query(query)
        if choice in CHOICES:
            return cls(choice, ResultFilter())
        if choice == FILTER and result_filter.is_active and not result_filter.ignored:
            return cls(FILTER, result_filter)
        return None

    @property
    def label(self) -> str:
        if self.choice != FILTER:
            return CHOICES[self.choice][0]
        parts = []
        f = self.result_filter
        if f.outcome:
            parts.append(f"outcome {f.outcome}")
        if f.status:
            parts.append(f"status {f.status}")
        if f.code:
            parts.append(f"error code {f.code}")
        if f.group:
            parts.append(f"error group {f.group}")
        if f.q:
            parts.append(f"matching “{f.q}”")
        return "the lines with " + ", ".join(parts)

    def query(self) -> str:
        """The query string naming this selection, for the confirmation's form and links."""
        if self.choice != FILTER:
            return f"select={self.choice}"
        return f"select={FILTER}&{self.result_filter.query()}"

    def fields(self) -> list[tuple[str, str]]:
        """The same as hidden form fields, so the confirmation posts exactly the selection it showed."""
        return list(QueryDict(self.query()).items())

    def lines(self, archive: ResultArchive):
        """The input lines selected, each once (never a duplicate answer, nor a result the input lacks)."""
        lines = ResultLine.objects.filter(archive=archive)
        selected = (
            lines.matching(self.result_filter) if self.choice == FILTER else lines.filter(CHOICES[self.choice][1])
        )
        return selected.input_lines()
