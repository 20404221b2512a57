"""A request page opened within a results search: its previous and next rows are the nearest matches of the search
(and of the filters beside it), in the results table's order, other than the rows of its own custom_id; found again
the same way whether the matches are read afresh or kept from an earlier read (results/matches.py)."""

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from batches.models import Batch, Connection, ConnectionSource
from results import matches
from results.models import ResultArchive, ResultFilter, ResultLine
from tests.conftest import kept_batch, result_line


def _fillers(first: int, last: int) -> dict:
    return {f"line-{n:02d}": "ok" for n in range(first, last + 1)}


@pytest.fixture
def kept(db, tmp_path):
    """40 input lines, five of them "hit-…" (two failed), "hit-c" answered twice (its further answer is the row right
    after it), one line never answered."""
    outcomes = {
        "hit-a": "ok",
        **_fillers(2, 9),
        "hit-b": (400, "invalid_value"),
        "hit-c": "ok",
        **_fillers(12, 24),
        "hit-d": (400, "invalid_value"),
        **_fillers(26, 35),
        "hit-e": "ok",
        **_fillers(37, 39),
        # An input line never answered; its entry in the output file is hit-c's second answer.
        "unanswered": result_line("hit-c", ("ok", "a second answer"))[1],
    }
    return kept_batch(outcomes, tmp_path)


@pytest.fixture(params=["default ranges", "small ranges"])
def ranges(request, monkeypatch):
    """The matches read outward from a row in the ranges a 50,000-line batch gets, or in ranges so small that a
    40-line batch needs them all and then the rest of the batch."""
    if request.param == "small ranges":
        monkeypatch.setattr(matches, "FIRST_RANGE", 1)
        monkeypatch.setattr(matches, "GROWTH", 2)
        monkeypatch.setattr(matches, "RANGES", 2)
    return request.param


def _rows(batch) -> list[tuple[int, str]]:
    return list(ResultLine.objects.filter(archive__batch=batch).in_order().values_list("position", "custom_id"))


def _position(batch, custom_id: str, nth: int = 0) -> int:
    return [position for position, row_id in _rows(batch) if row_id == custom_id][nth]


def _steps(client, batch, position: int, **query) -> tuple[str | None, str | None]:
    """(previous, next) custom_ids on the request page of the row at `position`, checked against its links."""
    url = reverse("results:request", args=[batch.batch_id, position])
    response = client.get(url, query)
    assert response.status_code == 200
    html = response.content.decode()
    steps = (response.context["previous"], response.context["next"])
    kept_query = ResultFilter.from_query(response.wsgi_request.GET).query()
    suffix = f"?{kept_query}" if kept_query else ""
    links = html.replace("&amp;", "&")
    for row in steps:
        if row is not None:
            assert reverse("results:request", args=[batch.batch_id, row.position]) + suffix in links
    return tuple(row.custom_id if row is not None else None for row in steps)


def _steps_read_afresh_and_kept(client, batch, position: int, **query):
    cache.clear()
    afresh = _steps(client, batch, position, **query)
    assert _steps(client, batch, position, **query) == afresh  # whatever the first read kept
    return afresh


def _table(client, batch, **query) -> list[tuple[int, str]]:
    """The rows of the results table for `query`, in its order, all of them."""
    response = client.get(reverse("results:list", args=[batch.batch_id]), query)
    assert response.status_code == 200
    page = response.context["page"]
    assert page.paginator.num_pages == 1
    return [(row.position, row.custom_id) for row in page]


def _neighbours(table, position: int, custom_id: str):
    """The nearest rows of `table` before and after `position` of other custom_ids: what previous and next mean."""
    before = [row_id for at, row_id in table if at < position and row_id != custom_id]
    after = [row_id for at, row_id in table if at > position and row_id != custom_id]
    return (before[-1] if before else None, after[0] if after else None)


@pytest.mark.django_db
def test_it_steps_to_the_nearest_matches_at_the_start_the_middle_and_the_end(kept, viewer_client, ranges):
    expected = {
        ("hit-a", 0): (None, "hit-b"),  # the first row of the batch
        ("line-02", 0): ("hit-a", "hit-b"),
        ("hit-b", 0): ("hit-a", "hit-c"),
        ("hit-c", 0): ("hit-b", "hit-d"),  # its own further answer, the next row, is not a step
        ("hit-c", 1): ("hit-b", "hit-d"),  # that further answer
        ("line-20", 0): ("hit-c", "hit-d"),  # a row the search does not select
        ("hit-e", 0): ("hit-d", None),
        ("line-39", 0): ("hit-e", None),
        ("unanswered", 0): ("hit-e", None),  # the last row of the batch
    }
    for (custom_id, nth), steps in expected.items():
        position = _position(kept, custom_id, nth)
        assert _steps_read_afresh_and_kept(viewer_client, kept, position, q="hit") == steps, custom_id


@pytest.mark.django_db
def test_it_steps_through_a_search_in_the_order_of_the_results_table(kept, viewer_client, ranges):
    """From every row, read afresh, then after the table kept its matches: the table's neighbours."""
    table = _table(viewer_client, kept, q="HIT-")
    assert [row_id for _at, row_id in table] == ["hit-a", "hit-b", "hit-c", "hit-c", "hit-d", "hit-e"]
    for position, custom_id in _rows(kept):
        expected = _neighbours(table, position, custom_id)
        assert _steps_read_afresh_and_kept(viewer_client, kept, position, q="HIT-") == expected, custom_id
    _table(viewer_client, kept, q="HIT-")
    for position, custom_id in _rows(kept):
        assert _steps(viewer_client, kept, position, q="HIT-") == _neighbours(table, position, custom_id), custom_id


@pytest.mark.django_db
def test_the_filters_beside_the_search_choose_the_steps_too(kept, viewer_client, ranges):
    _table(viewer_client, kept, q="hit")  # the search alone read and kept first: never its steps with a filter
    failed = {"q": "hit", "outcome": "failed"}
    assert [row_id for _at, row_id in _table(viewer_client, kept, **failed)] == ["hit-b", "hit-d"]
    for custom_id, steps in {
        "hit-a": (None, "hit-b"),
        "hit-b": (None, "hit-d"),
        "hit-c": ("hit-b", "hit-d"),
        "hit-d": ("hit-b", None),
        "hit-e": ("hit-d", None),
    }.items():
        position = _position(kept, custom_id)
        assert _steps(viewer_client, kept, position, **failed) == steps, custom_id
        assert _steps_read_afresh_and_kept(viewer_client, kept, position, **failed) == steps, custom_id
        assert _steps(viewer_client, kept, position, q="hit", outcome="succeeded")[0] != "hit-b"


@pytest.fixture
def wildcards(db, tmp_path):
    """custom_ids holding LIKE's wildcards and escape, each beside a row a wildcard read as one would match."""
    outcomes = {
        "first": "ok",
        "50%-off": "ok",
        "50x-off": "ok",
        "a_b": "ok",
        "axb": "ok",
        **_fillers(6, 20),
        "b\\c": "ok",
        "bxc": "ok",
        "100%": "ok",
        "x_y": "ok",
        "last": "ok",
    }
    return kept_batch(outcomes, tmp_path)


@pytest.mark.django_db
def test_wildcards_in_a_search_are_plain_characters(wildcards, viewer_client, ranges):
    for text, custom_id, steps in [
        ("%", "first", (None, "50%-off")),
        ("%", "a_b", ("50%-off", "100%")),
        ("%", "last", ("100%", None)),
        ("_", "50%-off", (None, "a_b")),
        ("_", "line-10", ("a_b", "x_y")),
        ("\\", "first", (None, "b\\c")),
        ("\\", "last", ("b\\c", None)),
        ("0%-", "axb", ("50%-off", None)),
        ("%%", "first", (None, None)),
        ("%\\", "first", (None, None)),
        ("_%", "first", (None, None)),
    ]:
        position = _position(wildcards, custom_id)
        assert _steps_read_afresh_and_kept(viewer_client, wildcards, position, q=text) == steps, (text, custom_id)


@pytest.mark.django_db
def test_hostile_search_text_is_searched_as_it_is_cleaned(kept, viewer_client, ranges):
    position = _position(kept, "line-20")
    assert _steps(viewer_client, kept, position, q="hit\x00") == ("hit-c", "hit-d")  # NUL dropped
    assert _steps(viewer_client, kept, position, q="\x00" * 3) == ("line-19", "line-21")  # no search at all
    assert _steps(viewer_client, kept, position, q="hit" * 20_000) == (None, None)  # cut to 200 characters
    assert _steps(viewer_client, kept, position, q="'; DROP TABLE results_resultline; --") == (None, None)
    assert _steps(viewer_client, kept, position, q="hit") == ("hit-c", "hit-d")


@pytest.mark.django_db
@pytest.mark.sqlite
def test_on_sqlite_the_next_page_within_a_search_reads_no_line_again(kept, viewer_client):
    """The search reads every line (no index holds parts of a text): the matches it read are kept for the next page,
    or taken from the results table's read."""

    def searches(position, **query) -> int:
        with CaptureQueriesContext(connection) as queries:
            _steps(viewer_client, kept, position, **query)
        return sum(" LIKE " in entry["sql"] for entry in queries.captured_queries)

    _table(viewer_client, kept, q="hit")
    assert searches(_position(kept, "line-20"), q="hit") == 0
    assert searches(_position(kept, "hit-e"), q="hit", outcome="failed") >= 1  # another filter: read
    assert searches(_position(kept, "hit-a"), q="hit", outcome="failed") == 0


@pytest.mark.django_db
@pytest.mark.sqlite
def test_on_sqlite_matches_too_many_to_keep_are_read_each_time(kept, viewer_client, monkeypatch):
    monkeypatch.setattr(matches, "KEPT_POSITIONS", 5)
    monkeypatch.setattr(matches, "FIRST_RANGE", 1)
    monkeypatch.setattr(matches, "RANGES", 1)
    position = _position(kept, "line-20")
    for _visit in range(2):
        _table(viewer_client, kept, q="hit")  # six rows
        with CaptureQueriesContext(connection) as queries:
            assert _steps(viewer_client, kept, position, q="hit") == ("hit-c", "hit-d")
        assert any(" LIKE " in entry["sql"] for entry in queries.captured_queries)


@pytest.mark.django_db
def test_kept_matches_follow_a_new_indexing_of_the_batch(kept, viewer_client, ranges):
    _table(viewer_client, kept, q="hit")
    position = _position(kept, "line-20")
    assert _steps(viewer_client, kept, position, q="hit") == ("hit-c", "hit-d")
    # The lines change only when the batch is indexed again, which records when.
    ResultLine.objects.filter(archive__batch=kept, custom_id="line-22").update(custom_id="hit-new")
    ResultArchive.objects.filter(batch=kept).update(archived_at=timezone.now())
    assert _steps(viewer_client, kept, position, q="hit") == ("hit-c", "hit-new")


@pytest.mark.django_db
def test_a_viewer_of_other_connections_never_sees_the_steps(kept, viewer_client):
    position = _position(kept, "line-20")
    assert _steps(viewer_client, kept, position, q="hit") == ("hit-c", "hit-d")  # read and kept
    hidden = Connection.objects.create(name="Elsewhere", slug="elsewhere", source=ConnectionSource.ADMIN)
    Batch.objects.filter(pk=kept.pk).update(connection=hidden)
    response = viewer_client.get(reverse("results:request", args=[kept.batch_id, position]), {"q": "hit"})
    # Unknown to this viewer: asked of the API, which no test server answers here (the access matrix has the 404).
    assert response.status_code in (404, 503)
    html = response.content.decode()
    assert "previous-request" not in html and "hit-c" not in html and "hit-d" not in html


@pytest.mark.django_db
def test_a_custom_id_answered_twice_is_looked_up_as_its_first_row(kept, viewer_client):
    table = _table(viewer_client, kept)
    first = min(at for at, row_id in table if row_id == "hit-c")

    found = viewer_client.get(reverse("results:request_of_custom_id", args=[kept.batch_id, "hit-c"]))

    assert found["Location"] == reverse("results:request", args=[kept.batch_id, first])
