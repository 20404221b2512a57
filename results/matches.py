"""Where a search reads every line (SQLite, results/search.py): the positions of the lines a searched filter selects,
read outward from a request page's row, and kept in the cache between requests when the whole batch had to be read.

A request page within a search shows the nearest match before and after its row. Without an index, a walk to the
nearest match reads every line on the way: for a rare text (a custom_id matching ten lines at the end), the whole
batch on every page (about 25 ms of SQLite's LIKE over 50,000 lines' custom_ids, requests and answers). Here the
lines are read in ranges of positions widening outward from the row (the position index bounds each read), which stop
at the nearest matches; when those are far, the rest of the batch is read too, and every match of the filter, when
few, is kept in the cache, as the results table keeps them when its search reads every match. The next pages within
that search (and the first one opened from the results table) read them from there.

The key names the archive, its indexing (archived_at: a batch's lines never change until it is indexed again) and
the filter. Who may read an archive is decided before any of its lines are read; its matches are the same for them
all, so one kept list serves every reader of that archive.
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Sequence

from django.core.cache import cache
from django.db.models import Q

from results import search
from results.models import MAX_POSITION, ResultArchive, ResultFilter

# At most this many positions are kept for one filter (4 bytes each: 40 KB). A filter selecting more lines has
# matches close to most rows, so that the ranges read around a row stop soon.
KEPT_POSITIONS = 10_000
KEPT_SECONDS = 30 * 60
# The first range read on each side of a row, and how much each next one is wider; past the last, the rest of the
# batch is read at once.
FIRST_RANGE = 128
GROWTH = 4
RANGES = 4


def every_match(archive: ResultArchive, result_filter: ResultFilter) -> Sequence[int]:
    """The positions of every line a searched filter selects, in order: the kept ones where a search reads every line
    (read and kept when not yet), or read off the indexes."""
    lines = archive.lines.matching(result_filter).in_order().values_list("position", flat=True)
    if not search.reads_every_line():
        return list(lines)
    positions = _kept(archive, result_filter)
    if positions is None:
        positions = list(lines)
        _keep(archive, result_filter, positions)
    return positions


def nearest(
    archive: ResultArchive, result_filter: ResultFilter, position: int, skipped: set[int]
) -> tuple[int | None, int | None]:
    """The positions of the nearest lines before and after `position` that a searched filter selects, other than
    `skipped` (the rows of the row's own custom_id), or None."""
    positions = _kept(archive, result_filter)
    if positions is not None:
        return _around(positions, position, skipped)
    return _read_outward(archive, result_filter, position, skipped)


def _around(positions: Sequence[int], position: int, skipped: set[int]) -> tuple[int | None, int | None]:
    before = bisect_left(positions, position) - 1
    while before >= 0 and positions[before] in skipped:
        before -= 1
    after = bisect_right(positions, position)
    while after < len(positions) and positions[after] in skipped:
        after += 1
    return (
        positions[before] if before >= 0 else None,
        positions[after] if after < len(positions) else None,
    )


def _read_outward(
    archive: ResultArchive, result_filter: ResultFilter, position: int, skipped: set[int]
) -> tuple[int | None, int | None]:
    """Reads ranges around `position`, each side until it has a match, each range GROWTH times wider than the last;
    if a side still has none after RANGES ranges, reads the rest of the batch and keeps every match, all read then."""
    matching = archive.lines.matching(result_filter).order_by()
    found: set[int] = set()
    low, high = position + 1, position  # read: the positions from low to high, none yet (the row's own comes first)
    width = FIRST_RANGE
    for _range in range(RANGES):
        before, after = _around(sorted(found), position, skipped)
        sides = Q()
        if before is None and low > 0:
            sides |= Q(position__lt=low, position__gte=max(low - width, 0))
            low = max(low - width, 0)
        if after is None:
            sides |= Q(position__gt=high, position__lte=high + width)
            high += width
        if not sides:
            return before, after
        found.update(matching.filter(sides).values_list("position", flat=True))
        width *= GROWTH
    before, after = _around(sorted(found), position, skipped)
    if (before is not None or low == 0) and after is not None:
        return before, after
    # Both sides bounded, so that SQLite reads each off the position index instead of reading the whole batch.
    rest = Q(position__lt=low, position__gte=0) | Q(position__gt=high, position__lte=MAX_POSITION)
    found.update(matching.filter(rest).values_list("position", flat=True))
    positions = sorted(found)
    _keep(archive, result_filter, positions)
    return _around(positions, position, skipped)


def _key(archive: ResultArchive, result_filter: ResultFilter) -> str:
    indexed = archive.archived_at.isoformat() if archive.archived_at else ""
    # Hashed: the search text is anything a user typed, up to 200 characters.
    digest = hashlib.sha256(f"{indexed}\n{result_filter.query()}".encode()).hexdigest()[:40]
    return f"batchboard:matches:{archive.pk}:{digest}"


def _kept(archive: ResultArchive, result_filter: ResultFilter) -> array | None:
    kept = cache.get(_key(archive, result_filter))
    if not isinstance(kept, bytes):
        return None
    positions = array("I")
    positions.frombytes(kept)
    return positions


def _keep(archive: ResultArchive, result_filter: ResultFilter, positions: list[int]) -> None:
    if len(positions) <= KEPT_POSITIONS:
        cache.set(_key(archive, result_filter), array("I", positions).tobytes(), KEPT_SECONDS)
