"""The results page's search (`q`): custom_id by any part, answer and request text (results/search.py)."""

import csv
import io

import pytest
from django.db import connection, transaction
from django.urls import reverse

from results.models import ResultFilter, ResultLine
from tests.conftest import kept_batch

QUARTERLY = "In summary, the document describes a quarterly plan with three goals and a fixed budget."


@pytest.fixture
def kept(db, tmp_path):
    return kept_batch(
        {
            "ticket-04999": ("ok", QUARTERLY),
            "ticket-49990": ("ok", "Paris."),
            "ticket-00001": ("ok", "A calm lake at dawn, mist rising over still water."),
            "other-7": (400, "invalid_value"),
        },
        tmp_path,
    )


def _found(client, batch, text) -> list[str]:
    response = client.get(reverse("results:list", args=[batch.batch_id]), {"q": text})
    assert response.status_code == 200
    return [row.custom_id for row in response.context["page"]]


@pytest.mark.django_db
def test_it_finds_lines_by_any_part_of_their_custom_id_in_any_case(kept, viewer_client):
    assert _found(viewer_client, kept, "4999") == ["ticket-04999", "ticket-49990"]
    assert _found(viewer_client, kept, "TICKET-0") == ["ticket-04999", "ticket-00001"]
    assert _found(viewer_client, kept, "r-7") == ["other-7"]
    assert _found(viewer_client, kept, "ticket-5") == []


@pytest.mark.django_db
def test_it_finds_lines_by_the_words_of_their_answer_or_request(kept, viewer_client):
    assert _found(viewer_client, kept, "quarterly plan") == ["ticket-04999"]
    assert _found(viewer_client, kept, "PARIS") == ["ticket-49990"]
    assert _found(viewer_client, kept, "mist rising") == ["ticket-00001"]
    assert _found(viewer_client, kept, "Grüße ticket-00001") == ["ticket-00001"]  # the request's words
    assert _found(viewer_client, kept, "quarterly budget plans") == []


@pytest.mark.django_db
@pytest.mark.parametrize("text", ["!(nothing) & none:* <-> x", "'", "a | b <-> c", "\\", "%", "_", "ünïcödé ★"])
def test_search_syntax_in_a_search_is_plain_text(kept, viewer_client, text):
    assert _found(viewer_client, kept, text) == []


@pytest.mark.django_db
def test_an_export_and_the_request_page_follow_the_search(kept, viewer_client):
    export = viewer_client.get(reverse("results:export_csv", args=[kept.batch_id]), {"q": "quarterly plan"})
    rows = list(csv.reader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert [row[1] for row in rows[1:]] == ["ticket-04999"]
    request_page = viewer_client.get(
        reverse("results:request", args=[kept.batch_id, 1]) + "?" + ResultFilter(q="ticket").query()
    )
    assert request_page.status_code == 200
    assert request_page.context["next"].custom_id == "ticket-49990"


@pytest.mark.django_db
@pytest.mark.postgresql
def test_on_postgresql_answer_text_matches_whole_words_in_any_order(kept, viewer_client):
    assert _found(viewer_client, kept, "plan quarterly") == ["ticket-04999"]
    assert _found(viewer_client, kept, "budget goals") == ["ticket-04999"]
    assert _found(viewer_client, kept, "quarter") == []  # part of a word: custom_id only is matched by any part
    assert _found(viewer_client, kept, "(quarterly) & !plan:*") == ["ticket-04999"]  # words, not search syntax


@pytest.mark.django_db
@pytest.mark.sqlite
def test_on_sqlite_answer_text_matches_any_part(kept, viewer_client):
    assert _found(viewer_client, kept, "quarter") == ["ticket-04999"]
    assert _found(viewer_client, kept, "plan quarterly") == []


@pytest.mark.django_db
@pytest.mark.postgresql
def test_on_postgresql_the_search_reads_its_indexes(kept):
    """An index is used only while the query writes exactly its expression (search.py, migration 0006). Over every
    batch's lines, so that only the search's indexes can answer; a four-line table is otherwise read whole."""
    lines = ResultLine.objects.matching(ResultFilter(q="quarterly plan")).in_order().values_list("position")
    sql, params = lines.query.sql_with_params()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "result_line_answer_words" in plan and "result_line_custom_id_trigrams" in plan
    assert "Filter" not in plan  # nothing is computed line by line


@pytest.mark.django_db
def test_the_search_field_says_what_a_search_matches(kept, viewer_client):
    html = viewer_client.get(reverse("results:list", args=[kept.batch_id])).content.decode()
    assert 'aria-describedby="filter-q-help"' in html
    if connection.vendor == "postgresql":
        assert "Answer and request: whole words, every one, in any order." in html
    else:
        assert "custom_id, answer or request: any part of them." in html
