"""Sections that other apps add to a batch's pages (its kept results, its retries, its activity) without batches
importing them.

An app registers its sections in its AppConfig.ready(). A page fills the sections of its slots once per request:
each section's context is read, its poll key taken from that context, and whether it may still change once the
batch is final. The page renders them ({% render_sections %}), folds their keys into its live region's key and keeps
polling while one is not settled, so a card that fills in after the batch turned final (results being fetched, an
automatic retry being sent) is never left stale, and an unchanged one never costs more than a 204.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

from django.http import HttpRequest

from batches.models import Batch

# Where a section appears. Names are template lookups: `{% render_sections sections.detail_cards %}`.
DETAIL_NOTICES = "detail_notices"  # the detail panel, under its freshness line
DETAIL_CARDS = "detail_cards"  # the detail panel, after the files
DETAIL_ASIDE = "detail_aside"  # the detail page's side column: the full page only, never polled
RESULTS_ACTIONS = "results_actions"  # the results page, above its filters (it shows a kept archive only)
SLOTS = (DETAIL_NOTICES, DETAIL_CARDS, DETAIL_ASIDE, RESULTS_ACTIONS)


def _always_settled(context: dict) -> bool:
    return True


@dataclass(frozen=True)
class Section:
    """One app's part of a page. `context(request, batch)` is everything `template` shows beyond the page's own
    context; `key(context)` is what of it the markup depends on (a value with a stable repr: its change is what
    makes a poll answer in full); `settled(context)` says nothing shown can change any more once the batch is final."""

    name: str
    slot: str
    template: str
    context: Callable[[HttpRequest, Batch], dict]
    key: Callable[[dict], Hashable]
    settled: Callable[[dict], bool] = _always_settled
    # Lower comes first in its slot; equal ones keep their registration order (INSTALLED_APPS').
    order: int = 0

    def __post_init__(self):
        if self.slot not in SLOTS:
            raise ValueError(f"There is no slot {self.slot!r} for the section {self.name!r}; slots are {SLOTS}.")


@dataclass(frozen=True)
class FilledSection:
    name: str
    template: str
    context: dict
    key: Hashable
    settled: bool


class FilledSections(dict):
    """The filled sections of a page, by slot (each slot a list, by order, then in registration order)."""

    @property
    def key(self) -> tuple:
        return tuple((section.name, section.key) for slot in sorted(self) for section in self[slot])

    @property
    def settled(self) -> bool:
        return all(section.settled for sections in self.values() for section in sections)


_sections: dict[str, Section] = {}


def register(section: Section) -> None:
    """Add `section` to its slot; by name, so a second AppConfig.ready() replaces it instead of adding it twice."""
    _sections[section.name] = section


def fill(request: HttpRequest, batch: Batch, *slots: str) -> FilledSections:
    """The sections of `slots` for `batch`, each context read once (the key, the settled state and the rendering
    share it)."""
    filled = FilledSections({slot: [] for slot in slots})
    for section in sorted(_sections.values(), key=lambda section: section.order):
        if section.slot in filled:
            context = section.context(request, batch)
            filled[section.slot].append(
                FilledSection(section.name, section.template, context, section.key(context), section.settled(context))
            )
    return filled
