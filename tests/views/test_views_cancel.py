"""Cancelling: confirm page, htmx and plain POSTs, one upstream cancel however many clicks, errors in words, bulk."""

import json
import re
import threading

import pytest
from django.db import connection
from django.test import Client

from batches import services, sync
from batches.models import Batch
from tests.fake_api import EXAMPLES, Reply

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_CURRENT_URL": "http://testserver/batches/?status=in_progress"}
FAIL_FAST = {"x-should-retry": "false"}


def _row_htmx(batch_id: str) -> dict:
    return {**HTMX, "HTTP_HX_TARGET": f"row-{batch_id}", "HTTP_HX_TRIGGER": f"cancel-{batch_id}"}


def _messages(response) -> list[str]:
    return [str(m) for m in response.wsgi_request._messages]


# --- One batch --------------------------------------------------------------


def test_it_shows_a_confirm_page_and_never_cancels_on_get(api, operator_client):
    batch = api.add("in_progress", metadata={"description": "Nightly eval"})

    response = operator_client.get(f"/batches/{batch['id']}/cancel/?next=/batches/%3Fstatus%3Din_progress")

    assert response.status_code == 200
    html = response.content.decode()
    assert f'<form method="post" action="/batches/{batch["id"]}/cancel/"' in html
    assert 'name="csrfmiddlewaretoken"' in html
    assert '<input type="hidden" name="next" value="/batches/?status=in_progress">' in html
    assert 'href="/batches/?status=in_progress">Keep running' in html
    assert api.cancels == []
    assert Batch.objects.get(batch_id=batch["id"]).cancel_requested_at is None


def test_it_says_on_the_confirm_page_that_a_finished_batch_cannot_be_cancelled(api, operator_client):
    batch = api.add("completed")
    html = operator_client.get(f"/batches/{batch['id']}/cancel/").content.decode()
    assert "already finished (completed · 1 failed); there is nothing to cancel" in html
    assert '<form method="post"' not in html.split("<main", 1)[1]


def test_it_answers_404_for_a_batch_nobody_knows(api, operator_client):
    assert operator_client.get("/batches/batch_nosuchthing/cancel/").status_code == 404
    # As for a batch of a connection the user may not see: nothing to cancel, nothing sent.
    assert operator_client.post("/batches/batch_nosuchthing/cancel/").status_code == 404
    assert api.cancels == []


def test_it_cancels_and_redirects_to_a_safe_next_url(api, operator_client, operator):
    batch = api.add("in_progress")

    response = operator_client.post(f"/batches/{batch['id']}/cancel/", {"next": "/batches/?status=in_progress"})

    assert response.status_code == 302 and response["Location"] == "/batches/?status=in_progress"
    assert api.cancels == [batch["id"]]
    row = Batch.objects.get(batch_id=batch["id"])
    assert row.status == "cancelling" and row.cancel_requested_by == operator.username
    assert _messages(response) == [
        f"Cancel requested for {batch['id']}. Requests already running finish; the rest will not run."
    ]


@pytest.mark.parametrize(
    "next_url", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:x", ""]
)
def test_it_redirects_to_the_detail_page_when_next_is_not_a_local_url(api, operator_client, next_url):
    batch = api.add("in_progress")
    response = operator_client.post(f"/batches/{batch['id']}/cancel/", {"next": next_url})
    assert response.status_code == 302 and response["Location"] == f"/batches/{batch['id']}/"


def test_it_answers_an_htmx_cancel_with_the_updated_row(api, operator_client):
    batch = api.add("in_progress")

    response = operator_client.post(f"/batches/{batch['id']}/cancel/", **_row_htmx(batch["id"]))

    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith(f'<tr id="row-{batch["id"]}"')
    assert 'data-live-state="cancelling"' in html and 'data-status="cancelling"' in html
    assert "hx-post" not in html and 'name="batch_id"' not in html  # nothing left to cancel
    # Its links keep the list's filters (from HX-Current-URL).
    assert f'href="/batches/{batch["id"]}/"' in html


def test_it_answers_an_htmx_cancel_from_the_detail_page_with_the_control(api, operator_client):
    batch = api.add("in_progress")

    response = operator_client.post(
        f"/batches/{batch['id']}/cancel/",
        HTTP_HX_REQUEST="true",
        HTTP_HX_TARGET=f"cancel-{batch['id']}",
        HTTP_HX_CURRENT_URL=f"http://testserver/batches/{batch['id']}/",
    )

    assert response.status_code == 200
    assert "batches-changed" in json.loads(response["HX-Trigger"])  # live regions refresh at once
    html = response.content.decode()
    assert f'<span id="cancel-{batch["id"]}" class="cancel-control">' in html
    assert "Cancel requested." in html and "hx-post" not in html


def test_it_sends_one_upstream_cancel_for_repeated_clicks(api, operator_client):
    batch = api.add("in_progress")
    url = f"/batches/{batch['id']}/cancel/"

    first = operator_client.post(url, **_row_htmx(batch["id"]))
    second = operator_client.post(url, **_row_htmx(batch["id"]))
    third = operator_client.post(url)

    assert first.status_code == second.status_code == 200 and third.status_code == 302
    assert api.cancels == [batch["id"]]
    assert 'data-live-state="cancelling"' in second.content.decode()
    assert _messages(third) == [f"A cancel was already requested for {batch['id']}."]


@pytest.mark.django_db(transaction=True)
def test_it_sends_one_upstream_cancel_when_two_users_click_together(api, django_user_model):
    from django.contrib.auth.models import Permission

    batch = api.add("in_progress")
    api.cancel_delay = 0.3  # the first cancel is still in flight when the second click arrives
    permission = Permission.objects.get(codename="cancel_batch")
    clients = []
    for name in ("alice", "bob"):
        user = django_user_model.objects.create_user(username=name, password="pw")
        user.user_permissions.add(permission)
        client = Client()
        client.force_login(user)
        clients.append(client)
    start = threading.Barrier(len(clients))
    responses = []

    def click(client):
        start.wait()
        try:
            responses.append(client.post(f"/batches/{batch['id']}/cancel/", **_row_htmx(batch["id"])))
        finally:
            connection.close()

    threads = [threading.Thread(target=click, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [r.status_code for r in responses] == [200, 200]
    assert api.cancels == [batch["id"]]
    assert Batch.objects.get(batch_id=batch["id"]).cancel_requested_by in ("alice", "bob")


def test_it_requires_a_csrf_token(api, operator):
    batch = api.add("in_progress")
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    url = f"/batches/{batch['id']}/cancel/"

    assert client.post(url).status_code == 403
    assert client.post(url, **_row_htmx(batch["id"])).status_code == 403
    assert client.post("/batches/cancel/", {"batch_id": batch["id"], "confirm": "yes"}).status_code == 403
    assert api.cancels == []

    client.get(url)  # the confirm page sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    response = client.post(url, HTTP_X_CSRFTOKEN=token, **_row_htmx(batch["id"]))
    assert response.status_code == 200
    assert api.cancels == [batch["id"]]


def test_it_forbids_cancelling_to_users_without_the_permission(api, viewer_client):
    batch = api.add("in_progress")
    url = f"/batches/{batch['id']}/cancel/"

    assert viewer_client.get(url).status_code == 403
    assert viewer_client.post(url).status_code == 403
    assert viewer_client.post(url, **_row_htmx(batch["id"])).status_code == 403
    assert viewer_client.get("/batches/cancel/", {"batch_id": batch["id"]}).status_code == 403
    assert (
        viewer_client.post("/batches/cancel/", {"batch_id": batch["id"], "confirm": "yes"}, **HTMX).status_code == 403
    )
    assert api.cancels == []
    assert Batch.objects.get(batch_id=batch["id"]).cancel_requested_at is None


def test_it_explains_that_a_batch_finished_before_the_cancel_arrived(api, operator_client):
    batch = api.add("in_progress")
    # Upstream it completed after the cache last saw it: the API answers 409.
    api.batches[batch["id"]].update(status="completed", completed_at=batch["created_at"] + 60)

    response = operator_client.post(f"/batches/{batch['id']}/cancel/", **_row_htmx(batch["id"]))

    assert response.status_code == 200
    html = response.content.decode()
    assert "This batch has already finished (completed); there is nothing to cancel." in html
    assert 'data-live-state="completed"' in html  # the real state was fetched and recorded
    assert Batch.objects.get(batch_id=batch["id"]).status == "completed"


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (
            Reply.example("error.404.batch_not_found.json", 404),
            "The OpenAI API does not know this batch any more (deleted, or another project); nothing was cancelled.",
        ),
        (
            Reply.example("error.429.rate_limit.json", 429, headers=FAIL_FAST),
            "The OpenAI API is rate limiting requests. Nothing was cancelled. Try again in a moment.",
        ),
        (
            Reply.example("error.429.insufficient_quota.json", 429, headers=FAIL_FAST),
            "The OpenAI account is out of quota. Nothing was cancelled.",
        ),
        (
            Reply(503, {"error": {"message": "The server is overloaded.", "type": "server_error"}}),
            "Cannot reach the OpenAI API right now. The cancel may not have gone through. Try again in a moment.",
        ),
        (
            Reply.example("error.401.invalid_api_key.json", 401),
            "The OpenAI API rejected the configured API key.",
        ),
    ],
    ids=["not-found", "rate-limited", "out-of-quota", "unavailable", "bad-key"],
)
def test_it_shows_upstream_errors_inline_and_lets_the_user_try_again(api, operator_client, reply, message):
    batch = api.add("in_progress")
    api.cancel_reply = reply
    url = f"/batches/{batch['id']}/cancel/"

    response = operator_client.post(url, **_row_htmx(batch["id"]))

    assert response.status_code == 200
    html = response.content.decode()
    assert '<span class="inline-error" role="alert">' in html and message in html
    assert "sk-sandbox" not in html
    assert f'hx-post="{url}"' in html  # still cancellable: the button stays for another try
    assert Batch.objects.get(batch_id=batch["id"]).cancel_requested_at is None

    full_page = operator_client.post(url)
    assert full_page.status_code == 302
    [text] = _messages(full_page)
    assert text.startswith(f"{batch['id']} was not cancelled. {message}")
    assert api.cancels == [batch["id"], batch["id"]]  # the failed claim was released


def test_it_shows_an_upstream_error_in_the_control_off_the_list(api, operator_client):
    batch = api.add("in_progress")
    api.cancel_reply = Reply.example("error.429.rate_limit.json", 429, headers=FAIL_FAST)

    response = operator_client.post(
        f"/batches/{batch['id']}/cancel/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET=f"cancel-{batch['id']}"
    )

    html = response.content.decode()
    assert response.status_code == 200
    assert "rate limiting requests" in html and f'hx-post="/batches/{batch["id"]}/cancel/"' in html


# --- Several batches --------------------------------------------------------


def test_it_shows_the_bulk_confirm_page_with_the_exact_number(api, operator_client):
    first, second = api.add("in_progress"), api.add("validating")
    finished = api.add("completed")
    query = {"batch_id": [first["id"], second["id"], finished["id"], first["id"]], "next": "/batches/?page=2"}

    response = operator_client.get("/batches/cancel/", query)

    assert response.status_code == 200
    html = response.content.decode()
    assert "Cancel 2 batches?" in html and "Yes, cancel 2 batches" in html
    form = re.search(r'<form method="post" action="/batches/cancel/">.*?</form>', html, re.S).group(0)
    # Each named with its connection, so that the confirmation cancels the very batches shown.
    assert re.findall(r'name="batch_id" value="([^"]+)"', form) == [f"default/{first['id']}", f"default/{second['id']}"]
    assert 'name="confirm" value="yes"' in form and 'name="next" value="/batches/?page=2"' in form
    assert f"<code>{finished['id']}</code>: already finished (completed · 1 failed)" in html
    assert api.cancels == []


def test_it_asks_to_confirm_a_bulk_post_without_confirmation(api, operator_client):
    batch = api.add("in_progress")
    response = operator_client.post("/batches/cancel/", {"batch_id": batch["id"]})
    assert response.status_code == 200 and "Cancel 1 batch?" in response.content.decode()
    assert api.cancels == []


def test_it_cancels_the_selected_batches_with_a_result_for_each(api, operator_client):
    fresh = api.add("in_progress")
    already = api.add("cancelling")
    finished_upstream = api.add("in_progress")
    api.batches[finished_upstream["id"]].update(status="expired", expired_at=finished_upstream["created_at"] + 99)
    ids = [fresh["id"], already["id"], finished_upstream["id"]]

    response = operator_client.post(
        "/batches/cancel/", {"batch_id": ids, "confirm": "yes", "next": "/batches/"}, **HTMX
    )

    assert response.status_code == 200
    html = response.content.decode()
    assert "1 cancel requested</strong>, 1 already cancelling, " in html and "1 not cancelled" in html
    assert f"<code>{fresh['id']}</code>:\n      cancel requested" in html
    assert f"<code>{already['id']}</code>:\n      a cancel was already requested" in html
    assert (
        f"<code>{finished_upstream['id']}</code>:\n      not cancelled. This batch has already finished (expired)"
        in html
    )
    assert api.cancels == [fresh["id"], finished_upstream["id"]]
    # The table follows out of band, with the list's filters from HX-Current-URL.
    table = re.search(r'<div id="batch-table"[^>]*>', html).group(0)
    assert 'hx-swap-oob="true"' in table and 'hx-get="/batches/?status=in_progress"' in table
    assert f'id="row-{fresh["id"]}"' not in html  # it is cancelling now: no longer in the in-progress view
    assert re.search(r'id="status-filter"[^>]*hx-swap-oob="true"', html)


def test_it_shows_bulk_results_on_a_page_without_javascript(api, operator_client):
    batch = api.add("in_progress")
    response = operator_client.post("/batches/cancel/", {"batch_id": [batch["id"]], "confirm": "yes", "next": "/x/"})
    html = response.content.decode()
    assert response.status_code == 200 and "<!doctype html>" in html
    assert f"<code>{batch['id']}</code>:\n      cancel requested" in html
    assert 'href="/x/">Back to the list' in html
    assert api.cancels == [batch["id"]]


@pytest.mark.parametrize(
    ("ids", "problem"),
    [
        ([], "No batches were selected."),
        (["batch_ok1", "<script>"], "“&lt;script&gt;” is not a batch id; nothing was cancelled."),
        ([f"batch_{i}" for i in range(101)], "101 batches were selected; cancel at most 100 at a time."),
    ],
    ids=["none", "not-an-id", "too-many"],
)
def test_it_refuses_a_bad_bulk_selection_and_cancels_nothing(api, operator_client, ids, problem):
    for headers in ({}, HTMX):
        response = operator_client.post("/batches/cancel/", {"batch_id": ids, "confirm": "yes"}, **headers)
        assert response.status_code == 200
        assert problem in response.content.decode()
    assert api.cancels == []


# --- End to end with the sandbox --------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_cancels_a_running_sandbox_batch(sandbox_url, settings, operator_client):
    settings.SANDBOX_SPEED = 1.0  # real time: the batch is still running when the cancel arrives
    client = services.get_client()
    uploaded = client.upload_file(EXAMPLES / "batch_input.chat_completions.jsonl")
    created = client.create_batch(input_file_id=uploaded.id, endpoint="/v1/chat/completions")
    sync.run_pass(force=True)

    page = operator_client.get("/batches/").content.decode()
    assert f'hx-post="/batches/{created.id}/cancel/"' in page
    response = operator_client.post(f"/batches/{created.id}/cancel/", **_row_htmx(created.id))

    assert response.status_code == 200
    assert 'data-live-state="cancelling"' in response.content.decode()
    assert client.retrieve_batch(created.id).status in ("cancelling", "cancelled")
    again = operator_client.post(f"/batches/{created.id}/cancel/")
    assert _messages(again) == [f"A cancel was already requested for {created.id}."]
