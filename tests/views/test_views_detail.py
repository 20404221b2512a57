"""The batch detail page (full page and live fragment of the same URL), share links, and file downloads."""

import json
import time

import pytest
from django.core.cache import cache

from batches import freshness, services, sync
from batches.models import record_batch
from tests.fake_api import Reply, example

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture(autouse=True)
def _empty_cache():
    cache.clear()  # file sizes are cached per process
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def _results_kept_on_open(settings):
    """The page on its own: no result files are kept unless someone opens them, so a final batch has nothing left
    to wait for. tests/views/test_live_regions.py covers the results card that fills in after the batch is final."""
    settings.BATCHBOARD_ARCHIVE = "on-open"


def _record(name: str, **changes):
    return record_batch(services.ApiBatch.from_api({**example(name), **changes}))


def _running(batch_id: str = "batch_run1", **changes) -> dict:
    now = int(time.time())
    return {
        **example("batch.in_progress.json"),
        "id": batch_id,
        "created_at": now - 600,
        "in_progress_at": now - 590,
        "expires_at": now + 86_400 - 600,
        "request_counts": {"total": 12_000, "completed": 7_300, "failed": 210},
        **changes,
    }


def _file(file_id: str, size: int) -> Reply:
    return Reply(200, {**example("file.batch_output.json"), "id": file_id, "bytes": size})


# --- The full page -----------------------------------------------------------


def test_it_shows_everything_a_completed_batch_holds(viewer_client, fake_api):
    _record("batch.completed.json")
    fake_api.script("GET", "/files/file-abc123", _file("file-abc123", 1354))
    fake_api.script("GET", "/files/file-cvaTdG", _file("file-cvaTdG", 2_500_000))
    fake_api.script("GET", "/files/file-HOWS94", _file("file-HOWS94", 512))

    response = viewer_client.get("/batches/batch_abc123/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "<title>batch_abc123 · completed · batchboard</title>" in html
    assert '<link rel="canonical" href="http://testserver/batches/batch_abc123/">' in html
    assert "completed · 1 failed" in html  # the honest badge
    assert 'aria-label="4 completed, 1 failed of 5 requests"' in html
    for text in ("gpt-4o-mini-2024-07-18", "/v1/chat/completions", "24h", "Nightly eval job", "user_123456789"):
        assert text in html
    # The timeline, oldest first, with absolute times.
    timeline = html.split('id="timeline-heading"')[1]
    positions = [
        timeline.index(f">{label}</span>") for label in ("validating", "in progress", "finalizing", "completed")
    ]
    assert positions == sorted(positions)
    assert "2024-03-26 16:45:33 UTC" in html
    # Usage and files with sizes and download links.
    assert '<td class="num usage-total">107</td>' in html
    assert "1.3 KB" in html and "2.4 MB" in html and "512 bytes" in html  # one size format
    for kind in ("input", "output", "error"):
        assert f'href="/batches/batch_abc123/files/{kind}/"' in html
    # Final: no polling.
    assert "hx-trigger" not in html.split('id="batch-panel"')[1].split(">")[0]
    assert len(fake_api.received) == 3  # the three file sizes; a final batch is not fetched again


def test_it_caches_file_sizes_and_survives_failing_lookups(viewer_client, fake_api):
    _record("batch.completed.json")
    fake_api.script("GET", "/files/file-abc123", _file("file-abc123", 1354))
    fake_api.script("GET", "/files/file-cvaTdG", Reply(500, {"error": {"message": "boom", "type": "server_error"}}))
    # file-HOWS94 is not scripted: a 404.

    assert viewer_client.get("/batches/batch_abc123/").status_code == 200
    assert viewer_client.get("/batches/batch_abc123/").status_code == 200
    assert len(fake_api.requests_to("GET", "/files/file-abc123")) == 1  # cached after the first page
    assert len(fake_api.requests_to("GET", "/files/file-cvaTdG")) == 2  # failures are not cached


def _file_lookups(fake_api) -> list:
    return [r for r in fake_api.received if r.method == "GET" and r.path.startswith("/files/")]


def test_it_does_not_ask_for_file_sizes_while_the_list_says_the_api_is_failing(viewer_client, fake_api):
    _record("batch.completed.json")  # final: its page never refreshes it, so its own freshness says nothing
    fake_api.script("GET", "/batches", Reply(503, {"error": {"message": "overloaded", "type": "server_error"}}))
    sync.run_pass(force=True)
    assert not freshness.list_freshness().ok

    response = viewer_client.get("/batches/batch_abc123/")

    assert response.status_code == 200
    assert _file_lookups(fake_api) == []
    for kind in ("input", "output", "error"):
        assert f'href="/batches/batch_abc123/files/{kind}/"' in response.text  # the downloads are still offered


def test_it_waits_for_an_unresponsive_api_once_rather_than_on_every_page(viewer_client, fake_api, settings):
    settings.OPENAI_TIMEOUT = 0.2
    _record("batch.completed.json")
    for file_id in ("file-abc123", "file-cvaTdG", "file-HOWS94"):
        late = _file(file_id, 100)
        late.delay = 1.0  # answers after the client gave up
        fake_api.script("GET", f"/files/{file_id}", late)

    first = viewer_client.get("/batches/batch_abc123/")
    second = viewer_client.get("/batches/batch_abc123/")

    assert first.status_code == second.status_code == 200
    assert len(_file_lookups(fake_api)) == 1  # one timeout, then no more waiting for a while
    assert 'href="/batches/batch_abc123/files/output/"' in second.text


def test_it_lists_the_errors_of_a_failed_batch_with_their_lines(viewer_client, fake_api):
    _record("batch.failed.json")
    html = viewer_client.get("/batches/batch_def456/").content.decode()
    assert '<td class="num">3</td><td><code>invalid_json_line</code>' in html
    assert '<td class="num">5</td><td><code>duplicate_custom_id</code></td><td><code>custom_id</code>' in html
    assert "The custom_id &#x27;request-2&#x27; on this line is already used" in html
    assert "This batch produced no result files." in html


def test_it_escapes_hostile_metadata(viewer_client, fake_api):
    hostile = {"<script>alert(1)</script>": '"><img src=x onerror=alert(2)>', "description": "<b>bold</b>"}
    _record("batch.completed.json", metadata=hostile)
    html = viewer_client.get("/batches/batch_abc123/").content.decode()
    assert "<script>alert(1)" not in html
    assert "<img src=x" not in html
    assert "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in html


def test_it_polls_a_running_batch_and_names_its_status_in_the_title(viewer_client, fake_api):
    fake_api.script("GET", "/batches/batch_run1", Reply(200, _running()))
    response = viewer_client.get("/batches/batch_run1/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "<title>batch_run1 · in progress · batchboard</title>" in html
    panel = html.split('id="batch-panel"')[1].split(">")[0]
    assert 'hx-get="/batches/batch_run1/"' in panel
    assert 'hx-trigger="every 5s, live-refresh' in panel
    assert "data-live-poll" in panel
    assert "7,510</strong> of 12,000 requests processed" in html
    assert "(in 23 h " in html  # expires-in while running, in the one duration style
    assert "data-live-toggle" in html  # the live controls


def test_it_offers_a_copy_button_and_a_readonly_link_to_share(viewer_client, fake_api):
    _record("batch.completed.json")
    html = viewer_client.get("/batches/batch_abc123/").content.decode()
    assert 'readonly value="http://testserver/batches/batch_abc123/"' in html
    assert 'data-copy-target="share-url" hidden>Copy link</button>' in html
    assert "/static/js/copy-link.js" in html
    assert "<script>" not in html  # CSP: no inline scripts


# --- The live fragment --------------------------------------------------------


def test_it_answers_a_poll_with_the_panel_only(viewer_client, fake_api):
    fake_api.script("GET", "/batches/batch_run1", Reply(200, _running()))
    response = viewer_client.get("/batches/batch_run1/", **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith("<title>batch_run1 · in progress · batchboard</title>")
    assert 'id="batch-panel"' in html
    assert "<html" not in html and "site-header" not in html
    assert 'hx-trigger="every 5s, live-refresh' in html
    assert "HX-Request" in response["Vary"]
    assert fake_api.requests_to("GET", "/files/file-abc123") == []  # no size lookups on every poll


def test_it_stops_polling_with_286_once_the_batch_is_final(viewer_client, fake_api):
    fake_api.script(
        "GET",
        "/batches/batch_run1",
        Reply(200, _running()),
        Reply(200, {**example("batch.completed.json"), "id": "batch_run1"}),
    )
    assert viewer_client.get("/batches/batch_run1/", **HTMX).status_code == 200
    fake_api.script("GET", "/files/file-cvaTdG", _file("file-cvaTdG", 2048))
    response = viewer_client.get("/batches/batch_run1/", **HTMX)
    assert response.status_code == 286
    html = response.content.decode()
    assert "hx-trigger" not in html and "data-live-poll" not in html
    assert "completed · 1 failed" in html
    assert "2 KB" in html  # the result files' sizes arrive with the last fragment


def test_it_stops_polling_a_batch_already_final(viewer_client, fake_api):
    _record("batch.expired.json")
    response = viewer_client.get("/batches/batch_jkl012/", **HTMX)
    assert response.status_code == 286
    assert "hx-get" not in response.content.decode()


# --- Not found, malformed, unreachable -----------------------------------------


def test_it_answers_404_for_an_id_the_api_does_not_know(viewer_client, sandbox_url):
    response = viewer_client.get("/batches/batch_nosuchbatch/")
    assert response.status_code == 404
    html = response.content.decode()
    assert "There is no batch batch_nosuchbatch." in html
    assert "Batch ids look like" in html


@pytest.mark.parametrize("path", ["/batches/not-a-batch/", "/batches/batch_a.b/", "/batches/batch_%3Cx%3E/"])
def test_it_answers_404_for_a_malformed_id_without_asking_the_api(viewer_client, fake_api, path):
    response = viewer_client.get(path)
    assert response.status_code == 404
    assert fake_api.received == []


def test_it_shows_the_unreachable_page_with_503(viewer_client, settings):
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"
    settings.OPENAI_MAX_RETRIES = 0
    response = viewer_client.get("/batches/batch_neverseen/")
    assert response.status_code == 503
    assert "Cannot reach the API" in response.content.decode()


def test_it_shows_a_known_batch_while_the_api_is_unreachable(viewer_client, settings):
    _record("batch.in_progress.json")
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"
    settings.OPENAI_MAX_RETRIES = 0
    response = viewer_client.get("/batches/batch_abc123/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "batch_abc123" in html and 'id="freshness"' in html


# --- Sharing -----------------------------------------------------------------


def test_it_brings_a_logged_out_visitor_back_to_the_shared_link(client, viewer, fake_api):
    _record("batch.completed.json")
    response = client.get("/batches/batch_abc123/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/batches/batch_abc123/"

    login = client.get(response["Location"])
    assert 'name="next" value="/batches/batch_abc123/"' in login.content.decode()
    response = client.post(
        "/accounts/login/", {"username": "viewer", "password": "pw-viewer", "next": "/batches/batch_abc123/"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/batches/batch_abc123/"
    assert client.get(response["Location"]).status_code == 200


# --- Downloads ---------------------------------------------------------------


def test_it_streams_the_exact_bytes_of_a_file(viewer_client, fake_api):
    _record("batch.completed.json")
    content = b'{"id": "batch_req_1", "custom_id": "request-1"}\n' + bytes(range(256)) * 1000
    fake_api.script("GET", "/files/file-cvaTdG/content", Reply(200, content, {"Content-Type": "application/binary"}))

    response = viewer_client.get("/batches/batch_abc123/files/output/")
    assert response.status_code == 200
    assert response.streaming
    assert b"".join(response.streaming_content) == content
    assert response["Content-Disposition"] == 'attachment; filename="batch_abc123-output.jsonl"'
    assert response["Content-Length"] == str(len(content))
    assert "sk-sandbox" not in str(response.headers)
    request = fake_api.requests_to("GET", "/files/file-cvaTdG/content")[0]
    assert request.headers["authorization"] == "Bearer sk-sandbox"  # the key stays between server and API


def test_it_downloads_through_the_sandbox(viewer_client, sandbox_url, tmp_path):
    path = tmp_path / "input.jsonl"
    content = (json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}) + "\n").encode()
    path.write_bytes(content)
    client = services.get_client()
    file = client.upload_file(path)
    batch = client.create_batch(input_file_id=file.id, endpoint="/v1/embeddings")
    response = viewer_client.get(f"/batches/{batch.id}/files/input/")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == content


def test_it_answers_404_for_a_file_the_batch_does_not_have(viewer_client, fake_api):
    _record("batch.failed.json")
    assert viewer_client.get("/batches/batch_def456/files/output/").status_code == 404
    assert viewer_client.get("/batches/batch_def456/files/error/").status_code == 404
    assert viewer_client.get("/batches/batch_def456/files/secrets/").status_code == 404
    assert fake_api.received == []


def test_it_explains_a_file_the_api_no_longer_has(viewer_client, fake_api):
    _record("batch.completed.json")
    fake_api.script("GET", "/files/file-cvaTdG/content", Reply.example("error.404.file_not_found.json", 404))
    response = viewer_client.get("/batches/batch_abc123/files/output/")
    assert response.status_code == 404
    assert "The API no longer has" in response.content.decode()


def test_it_shows_a_friendly_page_when_a_download_fails_upstream(viewer_client, fake_api):
    _record("batch.completed.json")
    fake_api.script(
        "GET", "/files/file-HOWS94/content", Reply(503, {"error": {"message": "x", "type": "server_error"}})
    )
    response = viewer_client.get("/batches/batch_abc123/files/error/")
    assert response.status_code == 502
    html = response.content.decode()
    assert "Cannot reach the OpenAI API" in html
    assert "sk-sandbox" not in html


def test_it_requires_login_to_download(client, fake_api):
    _record("batch.completed.json")
    response = client.get("/batches/batch_abc123/files/output/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert fake_api.received == []


def test_it_offers_cancel_only_to_operators_of_a_running_batch(operator_client, viewer, fake_api):
    fake_api.script("GET", "/batches/batch_run1", Reply(200, _running()))
    cancel = 'hx-post="/batches/batch_run1/cancel/"'
    assert cancel in operator_client.get("/batches/batch_run1/").content.decode()
    assert cancel in operator_client.get("/batches/batch_run1/", **HTMX).content.decode()
    operator_client.force_login(viewer)
    assert cancel not in operator_client.get("/batches/batch_run1/").content.decode()


def test_it_says_where_the_login_page_leads_from_a_shared_link(client):
    html = client.get("/accounts/login/?next=/batches/batch_abc123/").content.decode()
    assert 'Log in to see <span class="login-destination">batch_abc123</span>' in html
    assert "<h1>Log in</h1>" in client.get("/accounts/login/").content.decode()
    html = client.get("/accounts/login/?next=/batches/batch_abc123/results/r-17/").content.decode()
    assert 'Log in to see <span class="login-destination">request r-17 of batch_abc123</span>' in html
    html = client.get("/accounts/login/?next=/batches/batch_abc123/results/rows/17/").content.decode()
    assert "the request in row 17 of the results of batch_abc123</span>" in html
    html = client.get("/accounts/login/?next=/batches/batch_abc123/results/%3Cscript%3E/").content.decode()
    assert "request &lt;script&gt; of batch_abc123" in html and "<script>" not in html.split("<h1>")[1][:200]
    html = client.get("/accounts/login/?next=/batches/batch_abc123/results/?outcome=failed").content.decode()
    assert 'Log in to see <span class="login-destination">the results of batch_abc123</span>' in html
