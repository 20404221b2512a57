"""Issue 18's findings on the upstream budget and the service client: the shares of the budget against a flood of
creates (6), a gateway's error envelopes (12), a short pause against a person's call (13), redirects (8), and the
/readyz log and the sandbox's upload message (14)."""

import io
import json
import logging
import os
import subprocess
import sys
import threading
import uuid

import pytest
import requests
from django.conf import settings as django_settings
from django.db import connections
from django.test import Client

from batches import actions, budget, freshness, services, sync
from batches.models import Batch, Connection
from tests.fake_api import Reply, example

CHAT = "/v1/chat/completions"
CREATE_URL = "/batches/new/"
INPUT_FILE = "file-input1"


class HeldClock:
    """budget.clock and budget.sleep: the time stands still unless someone waits, and waiting only moves it on."""

    def __init__(self, now: float):
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def held_clock(monkeypatch):
    clock = HeldClock(7_000_000 * 60.0 + 1)  # one second into a minute
    monkeypatch.setattr(budget, "clock", clock)
    monkeypatch.setattr(budget, "sleep", clock.sleep)
    return clock


def _create_fields(input_file_id: str = INPUT_FILE) -> dict:
    return {
        "token": str(uuid.uuid4()),
        "endpoint": CHAT,
        "completion_window": "24h",
        "output_expiry_unit": "days",
        "input_file_id": input_file_id,
    }


def _serve_creates(api) -> None:
    """GET /files/<INPUT_FILE> and POST /batches answered as the API does: each create makes a new batch."""
    api.server.script("GET", f"/files/{INPUT_FILE}", Reply(200, {**example("file.batch_input.json"), "id": INPUT_FILE}))
    api.server.route(
        "POST", "/batches", lambda received: Reply(body=api.add("validating", record=False, input_file_id=INPUT_FILE))
    )


# --- Finding 6: the budget's shares against one user's creates ----------------


# A hundred create pages one after another, once: what the database does for each (one read and one conditional
# UPDATE of the minute's count, a per-user count) is tested on both databases below, under sixteen parallel creates.
@pytest.mark.once
@pytest.mark.django_db
@pytest.mark.parametrize("create_limit", [10, 100_000], ids=["per-user-limit", "shares-alone"])
def test_finding_6_one_users_100_creates_in_a_minute_leave_a_cancel_working_and_the_loop_making_passes(
    api, operator_client, settings, held_clock, create_limit
):
    settings.BATCHBOARD_UPSTREAM_BUDGET = 120
    settings.BATCHBOARD_USER_CREATE_LIMIT = create_limit
    running = api.add("in_progress")["id"]
    _serve_creates(api)

    answers = [operator_client.post(CREATE_URL, _create_fields()) for _ in range(100)]

    created = [answer for answer in answers if answer.status_code == 303]
    refused = [answer for answer in answers if answer.status_code == 200]
    assert len(created) + len(refused) == 100
    assert len(api.server.requests_to("POST", "/batches")) == len(created)
    if create_limit == 10:
        assert len(created) == 10
        assert all("the most one person may" in answer.text for answer in refused)
        assert len(api.server.requests_to("GET", f"/files/{INPUT_FILE}")) == 10  # nothing sent for the refused
    else:
        # Each create costs two calls (the file check, the create); they may spend all but the shares kept for
        # cancels (12) and for the sync loop (30).
        assert len(created) == (120 - 12 - 30) // 2
        assert "kept back: 12 for cancels, 30 for the sync loop" in refused[-1].text
    assert held_clock.slept == []  # one minute, held still

    cancel = operator_client.post(f"/batches/{running}/cancel/")

    assert cancel.status_code in (200, 302, 303)
    assert api.cancels == [running]
    assert Batch.objects.get(batch_id=running).status == "cancelling"
    for _ in range(3):
        lists_before = len(api.server.requests_to("GET", "/batches"))
        outcome = sync.run_pass(force=True)
        assert outcome.ran and not outcome.error and outcome.result.stopped == ""
        assert len(api.server.requests_to("GET", "/batches")) > lists_before


@pytest.mark.django_db
def test_finding_6_pages_and_creates_cannot_spend_the_shares_kept_for_cancels_and_the_loop(settings):
    settings.BATCHBOARD_UPSTREAM_BUDGET = 40  # 4 kept for cancels, 10 for the loop
    now = 8_000_000 * 60.0
    for _ in range(26):
        budget.take(now=now, caller=services.CallFor.CREATE)
    for caller in (services.CallFor.CREATE, services.CallFor.PAGE, services.CallFor.DOWNLOAD):
        with pytest.raises(services.BudgetExhausted, match="kept back: 4 for cancels, 10 for the sync loop"):
            budget.take(now=now, caller=caller)

    for _ in range(10):
        budget.take(now=now, caller=services.CallFor.LOOP)
    with pytest.raises(services.BudgetExhausted, match=r"kept back: 4 for cancels\)"):
        budget.take(now=now, caller=services.CallFor.LOOP)
    for _ in range(4):
        budget.take(now=now, caller=services.CallFor.CANCEL)
    with pytest.raises(services.BudgetExhausted, match=r"is spent \(kept back: 10 for the sync loop\)"):
        budget.take(now=now, caller=services.CallFor.CANCEL)
    assert budget.current_minute(now=now) == {"calls": 40, "budget": 40}


@pytest.mark.django_db
def test_finding_6_cancels_may_spend_the_common_share_but_not_the_loops(settings):
    settings.BATCHBOARD_UPSTREAM_BUDGET = 40
    now = 8_000_001 * 60.0
    taken = 0
    with pytest.raises(services.BudgetExhausted, match=r"kept back: 10 for the sync loop\)"):
        while True:
            budget.take(now=now, caller=services.CallFor.CANCEL)
            taken += 1

    assert taken == 30
    for _ in range(10):
        budget.take(now=now, caller=services.CallFor.LOOP)


@pytest.mark.django_db
@pytest.mark.parametrize("caller", list(services.CallFor))
def test_finding_6_a_call_still_costs_one_read_and_one_conditional_update(settings, django_assert_num_queries, caller):
    now = 8_000_002 * 60.0
    connection_id = Connection.objects.default().pk  # as the service client's budget knows it
    budget.take(now=now, connection_id=connection_id)  # opens the minute
    budget.allow_user("creates:alice", 10, now=now)

    with django_assert_num_queries(2):
        budget.take(now=now, caller=caller, connection_id=connection_id)
    with django_assert_num_queries(1):
        assert budget.allow_user("creates:alice", 10, now=now)


@pytest.mark.django_db(transaction=True)
def test_finding_6_sixteen_parallel_creates_never_pass_the_per_user_limit(api, operator, settings, held_clock):
    settings.BATCHBOARD_USER_CREATE_LIMIT = 10
    _serve_creates(api)
    start = threading.Barrier(16)
    answers = []

    def submit():
        try:
            client = Client()
            client.force_login(operator)
            start.wait()
            answers.append(client.post(CREATE_URL, _create_fields()))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=submit) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(answer.status_code for answer in answers) == [200] * 6 + [303] * 10
    assert len(api.server.requests_to("POST", "/batches")) == 10
    assert len(api.server.requests_to("GET", f"/files/{INPUT_FILE}")) == 10


@pytest.mark.django_db(transaction=True)
def test_finding_6_sixteen_parallel_counts_never_pass_a_per_user_limit():
    start = threading.Barrier(16)
    allowed = []

    def count():
        try:
            start.wait()
            allowed.append(budget.allow_user("upstream:user:1", 10, now=9_000_000 * 60.0 + 5))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=count) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert allowed.count(True) == 10 and allowed.count(False) == 6


@pytest.mark.django_db
def test_finding_6_automatic_retries_do_not_count_against_a_persons_create_limit(api, settings, held_clock):
    settings.BATCHBOARD_USER_CREATE_LIMIT = 1
    _serve_creates(api)

    outcomes = [
        actions.create_batch(token=uuid.uuid4(), endpoint=CHAT, user="alice", input_file_id=INPUT_FILE, by_person=False)
        for _ in range(3)
    ]
    person = [
        actions.create_batch(token=uuid.uuid4(), endpoint=CHAT, user="alice", input_file_id=INPUT_FILE)
        for _ in range(2)
    ]

    assert all(outcome.batch is not None for outcome in outcomes)
    assert person[0].batch is not None
    assert person[1].batch is None and "the most one person may" in person[1].error


@pytest.mark.parametrize("raw", ["0", "2.5", "ten"])
def test_finding_6_the_create_limit_setting_refuses_what_is_not_a_count(raw):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SANDBOX_", "DJANGO_"))}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=django_settings.BASE_DIR,
        env={**environment, "BATCHBOARD_USER_CREATE_LIMIT": raw},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert "BATCHBOARD_USER_CREATE_LIMIT must be a whole number between 1 and 100,000" in result.stderr
    assert "Traceback" not in result.stderr


# --- Finding 12: behind a gateway ----------------------------------------------

QUOTA = {
    "message": "You exceeded your current quota, please check your plan and billing details.",
    "type": "insufficient_quota",
    "param": None,
    "code": "insufficient_quota",
}


def _gateway(message: str, code="429", type_="internal_server_error") -> Reply:
    """A 429 as LiteLLM's proxy rewrites it: the status as the code, its own type, the API's error in the message."""
    return Reply(429, {"error": {"message": message, "type": type_, "param": None, "code": code}})


@pytest.fixture
def gateway_client(fake_api):
    slept = []
    client = services.BatchClient(api_key="sk-test-gateway", base_url=fake_api.url, max_retries=2, sleep=slept.append)
    client.slept = slept
    return client


@pytest.mark.parametrize(
    "message",
    [
        "litellm.RateLimitError: RateLimitError: OpenAIException - Error code: 429 - "
        + repr({"error": QUOTA})
        + "\nReceived Model Group=gpt-4o-mini\nAvailable Model Group Fallbacks=None",
        "Error code: 429 - " + json.dumps({"error": QUOTA}),
        "Error code: 429 - You exceeded your current quota, please check your plan and billing details.",
    ],
    ids=["python-dict-inside", "json-inside", "words-only"],
)
def test_finding_12_an_out_of_quota_error_rewritten_by_a_gateway_is_not_retried(fake_api, gateway_client, message):
    fake_api.script("GET", "/batches/batch_q1", _gateway(message))

    with pytest.raises(services.RateLimited) as caught:
        gateway_client.retrieve_batch("batch_q1")

    assert len(fake_api.requests_to("GET", "/batches/batch_q1")) == 1
    assert caught.value.code == "insufficient_quota"
    assert caught.value.message.startswith("You exceeded your current quota")
    assert "Error code" not in caught.value.message
    assert freshness.failure_message(caught.value) == "The OpenAI account is out of quota."


@pytest.mark.django_db
def test_finding_12_a_cancel_behind_a_gateway_says_the_account_is_out_of_quota(api, operator_client, settings):
    settings.OPENAI_MAX_RETRIES = 2
    batch_id = api.add("in_progress")["id"]
    api.cancel_reply = _gateway("Error code: 429 - " + repr({"error": QUOTA}))

    response = operator_client.post(f"/batches/{batch_id}/cancel/", follow=True)

    assert "The OpenAI account is out of quota. Nothing was cancelled." in response.text
    assert api.cancels == [batch_id]  # asked once, not retried


def test_finding_12_an_out_of_quota_error_a_gateway_answers_as_a_500_is_not_retried(fake_api, gateway_client):
    message = "OpenAIException - Error code: 429 - " + repr({"error": QUOTA})
    fake_api.script("GET", "/batches/batch_q5", Reply(500, {"error": {"message": message, "code": "500"}}))

    with pytest.raises(services.RateLimited) as caught:
        gateway_client.retrieve_batch("batch_q5")

    assert len(fake_api.requests_to("GET", "/batches/batch_q5")) == 1
    assert freshness.failure_message(caught.value) == "The OpenAI account is out of quota."


def test_finding_12_a_rate_limit_rewritten_by_a_gateway_is_retried_and_reads_as_the_apis(fake_api, gateway_client):
    inner = {
        "message": "Rate limit reached for requests.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    fake_api.script("GET", "/batches/batch_r1", _gateway("Error code: 429 - " + repr({"error": inner})))

    with pytest.raises(services.RateLimited) as caught:
        gateway_client.retrieve_batch("batch_r1")

    assert len(fake_api.requests_to("GET", "/batches/batch_r1")) == 3  # the first try and both retries
    assert (caught.value.message, caught.value.code, caught.value.type) == (
        "Rate limit reached for requests.",
        "rate_limit_exceeded",
        "requests",
    )


def test_finding_12_an_ambiguous_gateway_envelope_keeps_its_words_and_is_retried(fake_api, gateway_client):
    fake_api.script("GET", "/batches/batch_a1", _gateway("Too many requests, slow down."))

    with pytest.raises(services.RateLimited) as caught:
        gateway_client.retrieve_batch("batch_a1")

    assert len(fake_api.requests_to("GET", "/batches/batch_a1")) == 3
    assert caught.value.message == "Too many requests, slow down."
    assert caught.value.code is None and caught.value.type is None


def test_finding_12_a_hostile_gateway_message_is_shown_as_text_and_never_evaluated(fake_api, gateway_client):
    hostile = "Error code: 429 - {'error': __import__('os').system('false')} " + "{" * 5000
    fake_api.script("GET", "/batches/batch_h1", _gateway(hostile))

    with pytest.raises(services.RateLimited) as caught:
        gateway_client.retrieve_batch("batch_h1")

    assert caught.value.message.startswith("{'error': __import__")
    assert caught.value.code is None


def test_finding_12_a_gateways_answer_never_shows_the_key(fake_api, gateway_client):
    leaked = {**QUOTA, "message": "Incorrect API key provided: sk-test-gateway."}
    fake_api.script("GET", "/batches/batch_k1", _gateway("Error code: 429 - " + repr({"error": leaked})))

    with pytest.raises(services.RateLimited) as caught:
        gateway_client.retrieve_batch("batch_k1")

    assert "sk-test-gateway" not in str(caught.value)


# --- Finding 13: a short pause and a person's call ------------------------------


def _pause_everyone(api, held_clock, seconds: int) -> None:
    """Another caller (the sync loop) gets a 429 with this Retry-After: every caller is asked to pause."""
    other = api.add("in_progress")["id"]
    api.server.script(
        "GET", f"/batches/{other}", Reply(429, {"error": {"message": "slow"}}, headers={"retry-after": str(seconds)})
    )
    with pytest.raises(services.RateLimited):
        services.get_client().retrieve_batch(other)
    with pytest.raises(services.BudgetExhausted, match="slow down"):
        services.get_client().retrieve_batch(other)  # the loop skips its turn: nothing sent, nothing waited
    assert held_clock.slept == []


@pytest.mark.django_db
def test_finding_13_a_persons_download_waits_out_another_callers_short_pause(api, viewer_client, held_clock, caplog):
    batch_id = api.add("completed", output_file_id="file-out13")["id"]
    api.server.script("GET", "/files/file-out13/content", Reply(200, b'{"custom_id": "a"}\n'))
    _pause_everyone(api, held_clock, 2)

    with caplog.at_level(logging.INFO, logger="batches.budget"):
        response = viewer_client.get(f"/batches/{batch_id}/files/output/")

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b'{"custom_id": "a"}\n'
    assert held_clock.slept == [2.0]
    assert "a call for a person waits 2.0 s" in caplog.text


@pytest.mark.django_db
def test_finding_13_a_pause_longer_than_a_person_may_wait_is_refused_at_once(api, viewer_client, held_clock):
    batch_id = api.add("completed", output_file_id="file-out14")["id"]
    api.server.script("GET", "/files/file-out14/content", Reply(200, b"{}\n"))
    _pause_everyone(api, held_clock, 30)

    response = viewer_client.get(f"/batches/{batch_id}/files/output/")

    assert response.status_code == 502
    assert "asked batchboard to slow down" in response.text
    assert held_clock.slept == []
    assert api.server.requests_to("GET", "/files/file-out14/content") == []


@pytest.mark.django_db
def test_finding_13_a_persons_call_does_not_wait_out_a_long_retry_after_itself(fake_api, held_clock, settings):
    settings.OPENAI_MAX_RETRIES = 2
    fake_api.script(
        "POST", "/batches/batch_c13/cancel", Reply(429, {"error": {"message": "slow"}}, headers={"retry-after": "60"})
    )

    with pytest.raises(services.RateLimited):
        services.get_client(services.CallFor.CANCEL).cancel_batch("batch_c13")

    assert len(fake_api.requests_to("POST", "/batches/batch_c13/cancel")) == 1
    assert held_clock.slept == []


def _sandbox_input_file() -> str:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}]}
    line = json.dumps({"custom_id": "request-1", "method": "POST", "url": CHAT, "body": body}) + "\n"
    return services.get_client().upload_fileobj(io.BytesIO(line.encode()), filename="input.jsonl").id


@pytest.mark.django_db(transaction=True)
def test_finding_13_with_30_percent_429s_every_download_cancel_and_create_a_person_makes_succeeds(
    sandbox_url, operator_client, settings, sandbox_clock, held_clock
):
    settings.BATCHBOARD_UPSTREAM_BUDGET = 10_000
    settings.OPENAI_MAX_RETRIES = 2
    input_file_id = _sandbox_input_file()
    client = services.get_client()
    finished = [client.create_batch(input_file_id=input_file_id, endpoint=CHAT).id for _ in range(5)]
    sandbox_clock.advance(86_400)
    settings.SANDBOX_SPEED = 0.001  # the ones to cancel stay in progress
    running = [client.create_batch(input_file_id=input_file_id, endpoint=CHAT).id for _ in range(5)]
    sync.run_pass(force=True)
    assert Batch.objects.filter(batch_id__in=finished, status="completed").count() == 5
    settings.SANDBOX_RATE_LIMIT_RATE = 0.3
    settings.SANDBOX_RETRY_AFTER = 1.0
    rate_limited_before = budget.totals()["rate_limited"]

    for download_id, cancel_id in zip(finished, running, strict=True):
        sync.run_pass(force=True)  # the loop's last 429 may leave everyone paused, as another caller's would
        download = operator_client.get(f"/batches/{download_id}/files/output/")
        assert download.status_code == 200, download.text
        assert b"request-1" in b"".join(download.streaming_content)
        cancel = operator_client.post(f"/batches/{cancel_id}/cancel/")
        assert cancel.status_code in (302, 303), cancel.text
        assert Batch.objects.get(batch_id=cancel_id).status == "cancelling"
        create = operator_client.post(CREATE_URL, _create_fields(input_file_id))
        assert create.status_code == 303, create.text

    # The 429s happened (30 % of some thirty calls: the loop's passes and the person's calls; the loop no longer
    # fetches result files), and were lived through.
    assert budget.totals()["rate_limited"] - rate_limited_before >= 5
    assert max(held_clock.slept) <= services.INTERACTIVE_RETRY_AFTER_CAP


# --- Finding 8: redirects -------------------------------------------------------


@pytest.mark.django_db
def test_finding_8_a_redirected_file_is_neither_followed_nor_served(api, viewer_client):
    batch_id = api.add("completed", output_file_id="file-out8")["id"]
    elsewhere = f"http://127.0.0.1:{api.server.port}/v1/readyz"
    api.server.script("GET", "/files/file-out8/content", Reply(302, b"", headers={"Location": elsewhere}))
    api.server.script("GET", "/readyz", Reply(200, b"ready\n", headers={"Content-Type": "text/plain"}))

    response = viewer_client.get(f"/batches/{batch_id}/files/output/")

    assert response.status_code == 502
    assert "follows no redirects" in response.text
    assert api.server.requests_to("GET", "/readyz") == []


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_finding_8_no_call_follows_a_redirect(fake_api, status):
    fake_api.script("GET", "/batches/batch_r8", Reply(status, b"", headers={"Location": "https://example.com/x"}))
    fake_api.script("POST", "/batches/batch_r8/cancel", Reply(status, b"", headers={"Location": "/v1/batches/x"}))
    client = services.BatchClient(api_key="sk-test", base_url=fake_api.url, max_retries=2, sleep=lambda s: None)

    with pytest.raises(services.BatchApiError, match=f"with a redirect \\(HTTP {status}\\)"):
        client.retrieve_batch("batch_r8")
    with pytest.raises(services.BatchApiError, match="follows no redirects"):
        client.cancel_batch("batch_r8")

    assert len(fake_api.received) == 2  # each asked once, nothing followed, nothing retried


# --- Finding 14: small ones -------------------------------------------------------


@pytest.mark.django_db
def test_finding_14_readyz_logs_its_expected_503_at_info_not_as_a_request_error(client, caplog):
    with caplog.at_level(logging.INFO):
        response = client.get("/readyz")

    assert response.status_code == 503
    assert not [r for r in caplog.records if r.name == "django.request"]
    [line] = [r for r in caplog.records if r.name == "batches.views.health"]
    assert line.levelno == logging.INFO and "the sync loop has never run" in line.getMessage()


def test_finding_14_the_sandbox_says_how_to_send_expires_after_in_an_upload(sandbox_url):
    response = requests.post(
        f"{sandbox_url}/files",
        headers={"Authorization": "Bearer sk-sandbox"},
        data={"purpose": "batch", "expires_after": json.dumps({"anchor": "created_at", "seconds": 3600})},
        files={"file": ("input.jsonl", b"{}\n", "application/jsonl")},
        timeout=10,
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "expires_after"
    assert "expires_after[anchor]" in error["message"] and "expires_after[seconds]" in error["message"]
    assert "Unknown parameter" not in error["message"]
