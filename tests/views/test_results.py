"""Results kept locally: the join of input and result files, every outcome, the pages, exports, retention.

Batches run in the sandbox over real HTTP (their simulated clock moved by ageing the plan, not by sleeping), or
come from a scripted server where a result file must be broken in a way the sandbox never is.
"""

import csv
import io
import json
import threading
import time

import pytest
import requests
from django.core.management import call_command
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from batches import freshness, lookups, reactions, services, sync
from batches.models import Batch, Reaction
from results import answers, archive
from results.answers import one_line
from results.models import ArchiveState, Outcome, ResultArchive, ResultFilter, ResultLine
from sandbox import results as sandbox_results
from sandbox.models import SandboxBatch
from tests.fake_api import Reply

CHAT = "/v1/chat/completions"
DAY = 86_400


def chat_line(custom_id, **body):
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Hello {custom_id}"}], **body},
    }


def jsonl(lines) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def sandbox_batch(lines, *, endpoint=CHAT, scenario="", age=10 * DAY, cancel_after=None) -> Batch:
    """A batch run by the sandbox over HTTP, made `age` seconds old (speed 1), optionally cancelled `cancel_after`
    simulated seconds after its creation; recorded in the dashboard's cache as the sync loop would."""
    client = services.get_client()
    uploaded = client.upload_fileobj(io.BytesIO(jsonl(lines)), filename="input.jsonl")
    metadata = {"sandbox_scenario": scenario} if scenario else None
    created = client.create_batch(input_file_id=uploaded.id, endpoint=endpoint, metadata=metadata)
    shift = {"created": F("created") - age, "created_at": F("created_at") - age}
    if cancel_after is not None:
        shift["cancel_requested"] = F("created") - age + cancel_after
    SandboxBatch.objects.filter(pk=created.id).update(**shift)
    batch, _ = lookups.refresh_batch(created.id)
    assert batch.is_terminal, batch.status
    return batch


def request_url(batch: Batch, custom_id: str) -> str:
    """The request page of the first row of `custom_id`."""
    rows = ResultLine.objects.filter(archive__batch=batch, custom_id=custom_id).order_by("position")
    return reverse("results:request", args=[batch.batch_id, rows.values_list("position", flat=True).first()])


def archived(batch: Batch, tasks) -> ResultArchive:
    """The batch's results, kept by the reaction its becoming final scheduled (run by the test's task worker)."""
    assert tasks.drain() >= 1
    kept = ResultArchive.objects.get(batch=batch)
    assert kept.state == ArchiveState.READY, kept.problem
    return kept


def rows(kept: ResultArchive) -> list[ResultLine]:
    return list(kept.lines.in_order())


@pytest.fixture
def sandbox(sandbox_url, settings):
    settings.SANDBOX_SPEED = 1.0
    return sandbox_url


# --- The join and every outcome ---------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_joins_every_input_line_to_its_answer_in_input_order(sandbox, settings, tasks):
    settings.SANDBOX_DROP_RATE = 0.15
    lines = [chat_line(f"req-{n}") for n in range(1, 41)] + [chat_line("too-long", max_tokens=100_000)]
    batch = sandbox_batch(lines)
    kept = archived(batch, tasks)

    table = rows(kept)
    assert [row.custom_id for row in table] == [line["custom_id"] for line in lines]
    assert [row.line_number for row in table] == list(range(1, 42))
    dropped = {line["custom_id"] for line in lines if sandbox_results.dropped(batch.batch_id, line["custom_id"], 0.15)}
    assert dropped, "the seed of this test must drop at least one line"
    assert {row.custom_id for row in table if row.outcome == Outcome.MISSING} == dropped
    too_long = next(row for row in table if row.custom_id == "too-long")
    if "too-long" not in dropped:
        assert (too_long.outcome, too_long.status_code, too_long.error_code) == ("failed", 400, "invalid_value")
        assert "max_tokens is too large" in too_long.error_message
    for row in table:
        if row.outcome == Outcome.SUCCEEDED:
            outcome = sandbox_results.line_outcome(CHAT, row.custom_id, {"messages": [], "model": "gpt-4o-mini"})
            assert row.preview == one_line(outcome.text, 200)
            assert row.input_tokens > 0 and row.output_tokens > 0
        elif row.outcome == Outcome.FAILED:
            assert row.status_code >= 400 and row.error_code
    counts = kept.summary["outcomes"]
    assert sum(counts.values()) == 41 and counts["missing"] == len(dropped)
    assert kept.summary["unreadable_count"] == 0


@pytest.mark.django_db(transaction=True)
def test_lines_that_never_ran_are_expired_or_cancelled(sandbox, tasks):
    expired = archived(sandbox_batch([chat_line(f"e-{n}") for n in range(30)], scenario="expire", age=3 * DAY), tasks)
    outcomes = {row.outcome for row in rows(expired)}
    assert Outcome.EXPIRED in outcomes and outcomes <= {"succeeded", "failed", "expired"}
    group = next(group for group in expired.summary["groups"] if group["outcome"] == "expired")
    assert group["code"] == "batch_expired" and group["count"] == expired.summary["outcomes"]["expired"]

    cancelled = archived(sandbox_batch([chat_line(f"c-{n}") for n in range(30)], cancel_after=1200), tasks)
    table = rows(cancelled)
    assert Outcome.CANCELLED in {row.outcome for row in table}
    assert all(row.error_code == "batch_cancelled" for row in table if row.outcome == Outcome.CANCELLED)


@pytest.mark.django_db(transaction=True)
def test_each_endpoint_has_its_preview(sandbox, tasks):
    embeddings = [
        {
            "custom_id": f"v-{n}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": "hi", "dimensions": 8},
        }
        for n in range(3)
    ]
    moderations = [
        {"custom_id": f"m-{n}", "method": "POST", "url": "/v1/moderations", "body": {"input": "hello"}}
        for n in range(3)
    ]
    responses = [
        {"custom_id": f"r-{n}", "method": "POST", "url": "/v1/responses", "body": {"model": "gpt-4.1", "input": "Hi"}}
        for n in range(3)
    ]
    for lines, endpoint, expected in (
        (embeddings, "/v1/embeddings", "8 dimensions"),
        (moderations, "/v1/moderations", "not flagged"),
    ):
        kept = archived(sandbox_batch(lines, endpoint=endpoint), tasks)
        assert {row.preview for row in rows(kept) if row.outcome == "succeeded"} == {expected}
    kept = archived(sandbox_batch(responses, endpoint="/v1/responses"), tasks)
    for row in rows(kept):
        if row.outcome == "succeeded":
            text = sandbox_results.line_outcome("/v1/responses", row.custom_id, {"input": "Hi"}).text
            assert row.preview == one_line(text, 200)


# --- Broken result files (a scripted server) ---------------------------------------


def scripted_batch(api, fake_api, *, input_lines, output: bytes, error: bytes = b"", status="completed") -> Batch:
    files = {"input": ("file-in", jsonl(input_lines)), "output": ("file-out", output)}
    if error:
        files["error"] = ("file-err", error)
    for kind, (file_id, content) in files.items():
        info = {"id": file_id, "object": "file", "bytes": len(content), "created_at": 1, "filename": f"{kind}.jsonl"}
        info["purpose"] = "batch" if kind == "input" else "batch_output"
        fake_api.script("GET", f"/files/{file_id}", Reply(body=info))
        fake_api.script("GET", f"/files/{file_id}/content", Reply(body=content))
    data = api.add(
        status,
        input_file_id="file-in",
        output_file_id="file-out",
        error_file_id="file-err" if error else None,
    )
    return Batch.objects.get(batch_id=data["id"])


def result(custom_id, text="fine", status=200):
    body = (
        {
            "object": "chat.completion",
            "choices": [{"message": {"content": text}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        }
        if status < 400
        else {"error": {"message": text, "type": "invalid_request_error", "code": "bad_thing"}}
    )
    return {
        "id": "batch_req_x",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": "req_1", "body": body},
        "error": None,
    }


@pytest.mark.django_db
def test_duplicate_custom_ids_are_shown_and_unreadable_lines_counted_with_line_numbers(
    api, fake_api, viewer_client, tasks
):
    output = jsonl(
        [
            result("a", "first answer"),
            result("b"),
            '{"custom_id": "c", "response": {"status_code": 200, "bo',  # cut short
            result("a", "second answer"),
            "[1, 2]",
            result("stranger"),
        ]
    )
    batch = scripted_batch(api, fake_api, input_lines=[chat_line(x) for x in "abc"], output=output)
    kept = archived(batch, tasks)
    table = [(row.custom_id, row.line_number, row.outcome, row.duplicate, row.preview) for row in rows(kept)]
    assert table == [
        ("a", 1, "succeeded", False, "first answer"),
        ("a", 1, "succeeded", True, "second answer"),
        ("b", 2, "succeeded", False, "fine"),
        ("c", 3, "missing", False, ""),
        ("stranger", None, "succeeded", False, "fine"),
    ]
    assert kept.summary["unreadable_count"] == 2
    assert kept.summary["unreadable"] == [
        {"file": "o", "line": 3, "reason": "not valid JSON"},
        {"file": "o", "line": 5, "reason": "not a JSON object"},
    ]
    assert (kept.summary["duplicates"], kept.summary["unmatched"]) == (1, 1)

    page = viewer_client.get(reverse("results:list", args=[batch.batch_id]))
    assert page.status_code == 200
    text = page.content.decode()
    assert "another answer" in text and "not in the input" in text
    assert "output file, line 3: not valid JSON" in text and "output file, line 5: not a JSON object" in text
    request = viewer_client.get(request_url(batch, "a"))
    assert request.status_code == 200
    assert "first answer" in request.content.decode() and "second answer" in request.content.decode()


@pytest.mark.django_db
def test_errors_are_grouped_by_status_code_and_message_on_the_detail_page(api, fake_api, viewer_client, tasks):
    inputs = [chat_line(f"r{n}") for n in range(10)]
    output = jsonl([result(f"r{n}") for n in range(5)])
    error = jsonl([result(f"r{n}", f"Rate limit reached, retry in {n}s", 429) for n in range(5, 9)])  # r9 is missing
    batch = scripted_batch(api, fake_api, input_lines=inputs, output=output, error=error)
    archived(batch, tasks)
    detail = viewer_client.get(reverse("batches:detail", args=[batch.batch_id]))
    text = detail.content.decode()
    assert "Completed, but not every line succeeded" in text
    assert "1 missing from the result files" in text
    assert "\u00d7 4" in text and "\u00d7 1" in text  # messages differing only in numbers form one group
    assert f"{reverse('results:request_of', args=[batch.batch_id])}?custom_id=r5&amp;group=" in text
    kept = ResultArchive.objects.get(batch=batch)
    group = kept.summary["groups"][0]
    assert (group["status"], group["code"], group["count"], group["custom_ids"]) == (
        429,
        "bad_thing",
        4,
        ["r5", "r6", "r7"],
    )
    filtered = viewer_client.get(reverse("results:list", args=[batch.batch_id]), {"group": group["number"]})
    assert [row.custom_id for row in filtered.context["page"]] == ["r5", "r6", "r7", "r8"]


# --- Pages, filters and exports --------------------------------------------------


@pytest.fixture
def big_batch(api, fake_api, tasks):
    """250 lines: every 10th failed, every 25th missing, answers with HTML-looking text."""
    inputs = [chat_line(f"line-{n:03d}") for n in range(1, 251)]
    output, error = [], []
    for n in range(1, 251):
        if n % 25 == 0:
            continue
        if n % 10 == 0:
            error.append(result(f"line-{n:03d}", f"Invalid content in line {n}", 400))
        else:
            output.append(result(f"line-{n:03d}", f"Answer {n}:\n  <b>bold</b> <script>alert(1)</script>"))
    batch = scripted_batch(api, fake_api, input_lines=inputs, output=jsonl(output), error=jsonl(error))
    archived(batch, tasks)
    return batch


@pytest.mark.django_db
def test_filters_search_and_pages_live_in_the_url(big_batch, viewer_client):
    url = reverse("results:list", args=[big_batch.batch_id])
    first = viewer_client.get(url)
    assert len(first.context["page"]) == 100 and first.context["page"].paginator.count == 250
    third = viewer_client.get(url, {"page": 3})
    assert third.context["page"][0].line_number == 201

    failed = viewer_client.get(url, {"outcome": "failed"})
    assert [row.line_number for row in failed.context["page"]] == [
        10,
        20,
        30,
        40,
        60,
        70,
        80,
        90,
        110,
        120,
        130,
        140,
        160,
        170,
        180,
        190,
        210,
        220,
        230,
        240,
    ]
    missing = viewer_client.get(url, {"outcome": "missing"})
    assert [row.line_number for row in missing.context["page"]] == [25, 50, 75, 100, 125, 150, 175, 200, 225, 250]
    by_code = viewer_client.get(url, {"code": "bad_thing", "q": "line-1"})
    assert [row.custom_id for row in by_code.context["page"]] == [
        "line-110",
        "line-120",
        "line-130",
        "line-140",
        "line-160",
        "line-170",
        "line-180",
        "line-190",
    ]
    by_text = viewer_client.get(url, {"q": "answer 77:"})
    assert [row.custom_id for row in by_text.context["page"]] == ["line-077"]

    odd = viewer_client.get(url, {"outcome": "exploded", "status": "abc", "page": "999"})
    assert odd.status_code == 200
    assert "Ignored in the address" in odd.content.decode() and odd.context["page"].number == 3
    # The request links keep the filter; prev/next move through it.
    assert f"?{ResultFilter(outcome='failed').query()}" in failed.content.decode()


@pytest.mark.django_db
def test_the_request_page_shows_both_sides_escaped_and_steps_through_the_filter(big_batch, viewer_client):
    url = request_url(big_batch, "line-020")
    page = viewer_client.get(url, {"outcome": "failed"})
    assert page.status_code == 200
    assert (page.context["previous"].custom_id, page.context["next"].custom_id) == ("line-010", "line-030")
    assert "Invalid content in line 20" in page.content.decode()
    plain = viewer_client.get(request_url(big_batch, "line-001"))
    text = plain.content.decode()
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "Answer 1:\n  &lt;b&gt;bold&lt;/b&gt;" in text  # whitespace kept, nothing interpreted
    assert "Hello line-001" in text  # the request side
    assert plain.context["previous"] is None and plain.context["next"].custom_id == "line-002"
    assert viewer_client.get(reverse("results:request", args=[big_batch.batch_id, 999])).status_code == 404
    assert viewer_client.get(reverse("results:request", args=[big_batch.batch_id, 10**30])).status_code == 404

    def looked_up(custom_id, **query):
        return viewer_client.get(reverse("results:request_of_custom_id", args=[big_batch.batch_id, custom_id]), query)

    assert looked_up("line-020")["Location"] == url  # a link from when rows were linked by custom_id
    assert looked_up("line-020", outcome="failed")["Location"] == f"{url}?outcome=failed"
    assert looked_up("nope").status_code == 404
    lookup = reverse("results:request_of", args=[big_batch.batch_id])
    assert viewer_client.get(lookup, {"custom_id": "line-020", "group": "1"})["Location"] == f"{url}?group=1"
    assert viewer_client.get(lookup, {"custom_id": "a\x00b"}).status_code == 404
    assert viewer_client.get(lookup).status_code == 404


@pytest.mark.django_db
def test_the_table_shows_what_each_request_asked_and_can_hide_it(big_batch, viewer_client):
    url = reverse("results:list", args=[big_batch.batch_id])
    html = viewer_client.get(url).content.decode()
    assert '<th scope="col">Request</th>' in html
    assert '<td class="preview request-preview">Hello line-001</td>' in html
    assert 'id="toggle-request" href="?request=hide">Hide the Request column' in html

    hidden = viewer_client.get(url, {"request": "hide", "outcome": "failed"}).content.decode()
    assert '<th scope="col">Request</th>' not in hidden and "request-preview" not in hidden
    assert "Show the Request column" in hidden and '<input type="hidden" name="request" value="hide">' in hidden

    searched = viewer_client.get(url, {"q": "hello line-007"}).content.decode()
    assert "line-007" in searched and "line-008" not in searched  # the search reads what was asked too


def test_the_request_preview_is_the_last_user_message_or_the_input():
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": "First"},
            {"role": "assistant", "content": "x"},
            {"role": "user", "content": [{"type": "text", "text": "Last"}]},
        ]
    }
    assert answers.request_text("/v1/chat/completions", chat) == "Last"
    assert answers.request_text("/v1/responses", {"input": "Tell me", "instructions": "Be brief"}) == "Tell me"
    assert answers.request_text("/v1/embeddings", {"input": ["one", "two"]}) == "one · two"
    assert answers.request_text("/v1/completions", {"prompt": "Once upon"}) == "Once upon"
    assert answers.request_text("/v1/moderations", {"input": 42}) == ""
    assert answers.request_text("/v1/chat/completions", ["not", "a", "body"]) == ""


def test_exports_stream_the_current_filter(big_batch, viewer_client):
    response = viewer_client.get(reverse("results:export_csv", args=[big_batch.batch_id]), {"outcome": "failed"})
    event = AuditEvent.objects.get(action="download")
    assert (event.action, event.batch_id, event.target) == (
        "download",
        big_batch.batch_id,
        "kept results as csv (outcome=failed)",
    )
    assert response.streaming and response["Content-Type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode("utf-8-sig"))))
    assert table[0] == [
        "line",
        "custom_id",
        "request",
        "outcome",
        "status",
        "error_code",
        "error_message",
        "tokens",
        "answer",
    ]
    assert len(table) == 21 and table[1] == [
        "10",
        "line-010",
        "Hello line-010",
        "failed",
        "400",
        "bad_thing",
        "Invalid content in line 10",
        "",
        "",
    ]
    everything = viewer_client.get(reverse("results:export_csv", args=[big_batch.batch_id]))
    table = list(csv.reader(io.StringIO(b"".join(everything.streaming_content).decode("utf-8-sig"))))
    assert table[1][-1] == "Answer 1:\n  <b>bold</b> <script>alert(1)</script>" and table[1][-2] == "5"

    response = viewer_client.get(reverse("results:export_jsonl", args=[big_batch.batch_id]), {"outcome": "missing"})
    lines = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert [line["custom_id"] for line in lines][:2] == ["line-025", "line-050"]
    assert lines[0]["input"] == chat_line("line-025") and lines[0]["result"] is None
    jsonl_all = viewer_client.get(reverse("results:export_jsonl", args=[big_batch.batch_id]), {"q": "line-010"})
    line = json.loads(b"".join(jsonl_all.streaming_content))
    assert line["outcome"] == "failed" and line["result"]["response"]["status_code"] == 400


@pytest.mark.django_db
def test_input_lines_read_back_byte_for_byte_by_filter(big_batch):
    kept = ResultArchive.objects.get(batch=big_batch)
    selected = kept.lines.matching(ResultFilter(outcome="missing")).input_lines()
    raw = b"".join(archive.iter_input_bytes(kept, selected))
    assert raw == jsonl([chat_line(f"line-{n:03d}") for n in range(25, 251, 25)])


@pytest.mark.django_db
def test_results_pages_need_a_login(big_batch, client):
    for url in (
        reverse("results:list", args=[big_batch.batch_id]),
        request_url(big_batch, "line-001"),
        reverse("results:export_csv", args=[big_batch.batch_id]),
    ):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


@pytest.mark.django_db
def test_a_running_batch_polls_until_its_results_are_kept(api, fake_api, viewer_client, tasks):
    data = api.add("in_progress")
    url = reverse("results:list", args=[data["id"]])
    page = viewer_client.get(url)
    assert "fills in by itself" in page.content.decode() and "hx-trigger" in page.content.decode()
    fragment = viewer_client.get(url, headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and "hx-trigger" in fragment.content.decode()

    content = jsonl([result("only")])
    fake_api.script(
        "GET",
        "/files/file-o",
        Reply(
            body={
                "id": "file-o",
                "object": "file",
                "bytes": 1,
                "created_at": 1,
                "filename": "o",
                "purpose": "batch_output",
            }
        ),
    )
    fake_api.script("GET", "/files/file-o/content", Reply(body=content))
    api.batches[data["id"]].update(status="completed", output_file_id="file-o", completed_at=data["created_at"] + 9)
    pending = viewer_client.get(url, headers={"HX-Request": "true"})  # final now: the archive is asked for
    assert pending.status_code == 200 and "Fetching the result files" in pending.content.decode()
    assert tasks.drain() == 1
    done = viewer_client.get(url, headers={"HX-Request": "true"})
    assert done.status_code == 286 and "hx-trigger" not in done.content.decode()
    assert [row.custom_id for row in done.context["page"]] == ["only"]


# --- Keeping, upstream deletion, modes, retention ------------------------------------


@pytest.mark.django_db(transaction=True)
def test_kept_results_survive_the_api_deleting_the_files(sandbox, settings, viewer_client, tasks):
    batch = sandbox_batch([chat_line(f"k-{n}") for n in range(5)])
    kept = archived(batch, tasks)
    for file_id in (batch.output_file_id, batch.input_file_id):
        deleted = requests.delete(
            f"{sandbox}/files/{file_id}", headers={"Authorization": "Bearer sk-sandbox"}, timeout=10
        )
        assert deleted.status_code == 200
    assert archive.check_upstream() == 1
    kept.refresh_from_db()
    assert kept.upstream_deleted_at is not None

    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # no API at all from here on: pages read the archive
    page = viewer_client.get(reverse("results:list", args=[batch.batch_id]))
    assert "deleted upstream" in page.content.decode() and "kept locally since" in page.content.decode()
    assert len(page.context["page"]) == 5
    request = viewer_client.get(request_url(batch, "k-3"))
    assert request.status_code == 200 and "Hello k-3" in request.content.decode()
    kept_input = viewer_client.get(reverse("results:file", args=[batch.batch_id, "input"]))
    assert b"".join(kept_input.streaming_content) == jsonl([chat_line(f"k-{n}") for n in range(5)])
    assert viewer_client.get(reverse("results:file", args=[batch.batch_id, "nothing"])).status_code == 404


@pytest.mark.django_db
def test_files_already_gone_upstream_leave_an_honest_archive(api, fake_api, viewer_client, tasks):
    data = api.add("completed", output_file_id="file-gone")
    assert tasks.drain() == 1
    kept = ResultArchive.objects.get(batch__batch_id=data["id"])
    assert kept.state == ArchiveState.UNAVAILABLE
    page = viewer_client.get(reverse("results:list", args=[data["id"]]), headers={"HX-Request": "true"})
    assert page.status_code == 286 and "no longer has this batch" in page.content.decode()


@pytest.mark.django_db
def test_a_failing_api_is_retried_with_backoff_then_the_archive_says_why_it_gave_up(api, fake_api, tasks):
    data = api.add("completed", output_file_id="file-o")
    fake_api.script("GET", "/files/file-o", Reply(503, {"error": {"message": "down", "type": "server_error"}}))
    assert tasks.drain() == 1
    kept = ResultArchive.objects.get(batch__batch_id=data["id"])
    reaction = Reaction.objects.get(batch=kept.batch, step="keep_results")
    assert kept.state == ArchiveState.RETRY and "try again shortly" in kept.problem
    assert reaction.state == "pending" and reaction.run_after > timezone.now()
    assert tasks.drain() == 0  # not due yet

    while reaction.state == "pending":
        tasks.advance(reactions.BACKOFF_MAX_SECONDS * 1.2)
        tasks.drain()
        reaction.refresh_from_db()

    kept.refresh_from_db()
    assert (reaction.state, reaction.tries) == ("failed", reactions.MAX_TRIES)
    assert kept.state == ArchiveState.UNAVAILABLE and kept.attempts == reactions.MAX_TRIES
    assert reaction.error == kept.problem == "Cannot reach the OpenAI API right now."


@pytest.mark.django_db
def test_on_open_mode_keeps_results_only_once_someone_looks(big_batch, api, fake_api, settings, viewer_client, tasks):
    settings.BATCHBOARD_ARCHIVE = "on-open"
    other = scripted_batch(api, fake_api, input_lines=[chat_line("x")], output=jsonl([result("x")]))
    assert tasks.drain() == 0 and not ResultArchive.objects.filter(batch=other).exists()
    viewer_client.get(reverse("results:list", args=[other.batch_id]))
    assert ResultArchive.objects.get(batch=other).wanted
    assert tasks.drain() == 1 and ResultArchive.objects.get(batch=other).is_ready


@pytest.mark.django_db
def test_prune_results_deletes_files_and_lines_but_keeps_the_summary(big_batch, viewer_client):
    kept = ResultArchive.objects.get(batch=big_batch)
    names = list(kept.stored_names.values())
    ResultArchive.objects.filter(pk=kept.pk).update(archived_at=timezone.now() - timezone.timedelta(days=100))
    out = io.StringIO()
    call_command("prune_results", "--older-than", "90d", "--dry-run", stdout=out)
    assert "would prune" in out.getvalue() and kept.lines.count() == 250
    call_command("prune_results", "--older-than", "90d", stdout=io.StringIO())
    kept.refresh_from_db()
    assert kept.state == ArchiveState.PRUNED and kept.lines.count() == 0
    assert not any(archive.results_storage().exists(name) for name in names)
    assert kept.summary["outcomes"] == {"succeeded": 220, "failed": 20, "missing": 10}
    page = viewer_client.get(reverse("results:list", args=[big_batch.batch_id]))
    assert "were pruned" in page.content.decode() and "\u00d7 10" in page.content.decode()


@pytest.mark.django_db
def test_a_result_file_already_gone_is_named_and_its_lines_show_as_missing(api, fake_api, viewer_client, tasks):
    batch = scripted_batch(api, fake_api, input_lines=[chat_line("a"), chat_line("b")], output=jsonl([result("a")]))
    Batch.objects.filter(pk=batch.pk).update(error_file_id="file-expired")  # the API answers 404 for it
    kept = archived(batch, tasks)
    assert kept.summary["files_gone"] == ["error"]
    assert [(row.custom_id, row.outcome) for row in rows(kept)] == [("a", "succeeded"), ("b", "missing")]
    page = viewer_client.get(reverse("results:list", args=[batch.batch_id]))
    assert "The error file of this batch was no longer available upstream" in page.content.decode()
    missing = viewer_client.get(request_url(batch, "b"))
    assert "No answer came back for this request." in missing.content.decode()
    assert "in neither result file" in missing.content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_batch_the_sync_loop_finds_final_has_its_results_kept_by_a_task_worker(sandbox, settings, task_worker):
    settings.BATCHBOARD_HISTORY_INTERVAL = 0.05
    stop = threading.Event()
    loop = threading.Thread(target=sync.sync_loop, args=(stop,), kwargs={"wake_every": 0.05})
    loop.start()
    try:
        _wait_for(lambda: freshness.list_freshness().as_of is not None)  # installed: the first pass ran
        client = services.get_client()
        uploaded = client.upload_fileobj(io.BytesIO(jsonl([chat_line(f"s-{n}") for n in range(4)])), filename="i.jsonl")
        created = client.create_batch(input_file_id=uploaded.id, endpoint=CHAT)
        SandboxBatch.objects.filter(pk=created.id).update(created=F("created") - DAY, created_at=F("created_at") - DAY)
        # Only the loop records it (final already), and only a task worker keeps its results.
        _wait_for(lambda: ResultArchive.objects.filter(state=ArchiveState.READY).exists())
    finally:
        stop.set()
        loop.join(timeout=20)

    kept = ResultArchive.objects.get(batch__batch_id=created.id)
    assert kept.state == ArchiveState.READY and kept.summary["rows"] == 4


def _wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_filter_that_matches_nothing_keeps_the_filters_and_says_so(big_batch, viewer_client):
    url = reverse("results:list", args=[big_batch.batch_id])
    html = viewer_client.get(url, {"q": "no-such-line", "outcome": "bogus", "page": "999"}).content.decode()
    assert "No rows match these filters." in html
    assert 'id="filter-q"' in html and "Clear filters" in html  # the way back is on screen
    assert "Ignored in the address: outcome" in html
