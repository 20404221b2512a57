"""The results endpoints: rows with the results page's filters and a cursor, one request with its answer, the CSV
and JSONL exports streamed, and a 409 while results are not kept."""

from __future__ import annotations

import json

import pytest

from audit.models import Action, AuditEvent
from batches.models import record_batch
from tests.api.conftest import error_of
from tests.conftest import input_line, kept_batch, observation

pytestmark = pytest.mark.django_db

OUTCOMES = {"a": "ok", "b": (400, "invalid_value"), "c": "ok", "d": "expired", "e": (500, "server_error")}


@pytest.fixture
def kept(tmp_path):
    return kept_batch(OUTCOMES, tmp_path)


def test_it_pages_the_rows_in_input_order_by_cursor(token_client, kept):
    seen, cursor = [], ""
    while True:
        page = token_client.get(f"/api/v1/batches/{kept.batch_id}/results", {"limit": 2, "cursor": cursor}).json()
        seen += [(row["position"], row["custom_id"], row["outcome"]) for row in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]

    assert [custom_id for _position, custom_id, _outcome in seen] == list(OUTCOMES)
    assert [outcome for *_rest, outcome in seen] == ["succeeded", "failed", "succeeded", "expired", "failed"]


def test_it_filters_the_rows_as_the_results_page_does(token_client, kept):
    def custom_ids(**query):
        response = token_client.get(f"/api/v1/batches/{kept.batch_id}/results", query)
        assert response.status_code == 200, response.content
        return [row["custom_id"] for row in response.json()["data"]]

    assert custom_ids(outcome="failed") == ["b", "e"]
    assert custom_ids(code="server_error") == ["e"]
    assert custom_ids(status="400") == ["b"]
    assert error_of(token_client.get(f"/api/v1/batches/{kept.batch_id}/results", {"outcome": "great"}), 400)


def test_it_gives_one_request_with_its_answer(token_client, kept):
    body = token_client.get(f"/api/v1/batches/{kept.batch_id}/results/1").json()

    assert body["custom_id"] == "a" and body["outcome"] == "succeeded" and body["cut"] is False
    assert body["request"] == json.loads(input_line("a", 0))
    assert body["result"]["response"]["body"]["choices"][0]["message"]["content"] == "answer to a"
    assert error_of(token_client.get(f"/api/v1/batches/{kept.batch_id}/results/99"), 404)


def test_it_streams_the_exports_and_audits_them(token_client, kept):
    csv = token_client.get(f"/api/v1/batches/{kept.batch_id}/results/export.csv", {"outcome": "failed"})
    jsonl = token_client.get(f"/api/v1/batches/{kept.batch_id}/results/export.jsonl")

    assert csv.status_code == 200 and csv.streaming and csv["Content-Type"].startswith("text/csv")
    rows = b"".join(csv.streaming_content).decode().splitlines()
    assert len(rows) == 3 and rows[1].split(",")[1] == "b"
    lines = [json.loads(line) for line in b"".join(jsonl.streaming_content).splitlines()]
    assert [line["custom_id"] for line in lines] == list(OUTCOMES)
    assert lines[0]["input"] == json.loads(input_line("a", 0))
    who = set(AuditEvent.objects.filter(action=Action.DOWNLOAD).values_list("username", flat=True))
    assert who == {"operator (token: ci-deploy)"}


def test_it_answers_409_while_the_results_are_not_kept(token_client):
    record_batch(observation("batch_run1"))

    for path in ("results", "results/1", "results/export.csv"):
        error = error_of(token_client.get(f"/api/v1/batches/batch_run1/{path}"), 409)
        assert error["code"] == "results_not_ready" and error["details"]["batch_status"] == "in_progress"


def test_it_refuses_a_made_up_results_cursor(token_client, kept):
    response = token_client.get(f"/api/v1/batches/{kept.batch_id}/results", {"cursor": "12"})

    assert error_of(response, 400)["code"] == "invalid_cursor"
