"""Read-only share links: made by anyone who may view a batch, opened by anyone holding them, for that batch only,
with no control, until they expire or are revoked; every opening audited, the token kept only as its hash."""

import logging
import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from audit.models import Action, AuditEvent
from batches.models import record_batch
from results.rows import RENDER_BYTES
from sharing.models import MAX_ACTIVE_PER_BATCH, ShareLink, token_hash
from tests.conftest import completed, kept_batch, observation

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_cache")]

SHARED_URL = re.compile(r"https?://[^/\"]+/shared/([A-Za-z0-9_-]{43})/")


def make_link(client, batch_id, *, hours=24, name="", results=False, exports=False):
    """Make a link through the form; the token the answer shows (once)."""
    data = {"name": name, "hours": hours}
    if results:
        data["allow_results"] = "on"
    if exports:
        data["allow_exports"] = "on"
    response = client.post(f"/batches/{batch_id}/share-links/", data)
    assert response.status_code == 201, response.text
    return SHARED_URL.search(response.text).group(1)


def share_card(client, batch_id) -> str:
    return client.get(f"/batches/{batch_id}/").text.split('id="share-links"')[1].split("</section>")[0]


@pytest.fixture
def anonymous():
    return Client()


@pytest.fixture
def running(db):
    """A running batch that is a retry of another: its page must name neither the other nor any control."""
    return record_batch(
        observation(
            "batch_shared",
            processed=4,
            metadata={"description": "quarterly eval", "team": "evals", "batchboard_retry_of": "batch_hidden_parent"},
        )
    )


@pytest.fixture
def kept(tmp_path):
    return kept_batch({"a": "ok", "b": (400, "invalid_value"), "c": ("ok", "forty-two")}, tmp_path)


def test_it_shows_the_link_once_and_stores_only_its_hash(viewer_client, running):
    token = make_link(viewer_client, "batch_shared", name="for the auditors")

    link = ShareLink.objects.get()
    assert link.token_hash == token_hash(token)
    assert link.created_by_name == "viewer"
    stored = " ".join(str(value) for value in ShareLink.objects.values_list().get())
    assert token not in stored
    assert not AuditEvent.objects.filter(detail__contains=token).exists()
    assert not AuditEvent.objects.filter(target__contains=token).exists()
    detail = viewer_client.get("/batches/batch_shared/")
    assert token not in detail.text  # shown once: the list of links names it, never its address
    assert "for the auditors" in detail.text


def test_a_logged_out_reader_sees_the_batch_read_only(viewer_client, anonymous, running):
    token = make_link(viewer_client, "batch_shared", name="for the auditors")

    response = anonymous.get(f"/shared/{token}/")

    assert response.status_code == 200
    assert "batch_shared" in response.text
    assert "quarterly eval" in response.text
    assert "4</strong> of 10 requests processed" in response.text
    assert response["X-Robots-Tag"].startswith("noindex")
    assert response["Referrer-Policy"] == "no-referrer"
    assert '<meta name="robots" content="noindex' in response.text
    assert "no-store" in response["Cache-Control"]
    # No control, nothing polling, no way to the rest of the dashboard, nobody named.
    assert "<form" not in response.text
    assert "hx-" not in response.text
    assert "<script" not in response.text
    assert "/batches/" not in response.text
    assert "Cancel" not in response.text
    assert "batch_hidden_parent" not in response.text
    assert "viewer" not in response.text
    assert "for the auditors" not in response.text
    assert "Activity" not in response.text
    assert "Results" not in response.text  # results were not shared
    copied_without_slash = anonymous.get(f"/shared/{token}")
    assert (copied_without_slash.status_code, copied_without_slash["Location"]) == (301, f"/shared/{token}/")


def test_results_open_only_when_the_link_allows_them(viewer_client, anonymous, kept):
    page_only = make_link(viewer_client, kept.batch_id)
    with_results = make_link(viewer_client, kept.batch_id, results=True)

    assert anonymous.get(f"/shared/{page_only}/results/").status_code == 404
    assert anonymous.get(f"/shared/{page_only}/results/rows/1/").status_code == 404
    assert "/results/" not in anonymous.get(f"/shared/{page_only}/").text
    assert f"/shared/{with_results}/results/" in anonymous.get(f"/shared/{with_results}/").text
    results = anonymous.get(f"/shared/{with_results}/results/")
    assert results.status_code == 200
    assert f"/shared/{with_results}/results/rows/1/" in results.text
    assert "/batches/" not in results.text
    assert "export" not in results.text.lower()
    failed = anonymous.get(f"/shared/{with_results}/results/?outcome=failed")
    assert f"/shared/{with_results}/results/rows/2/?outcome=failed" in failed.text
    assert "rows/1/" not in failed.text
    assert "rows/3/" in anonymous.get(f"/shared/{with_results}/results/?q=forty").text
    assert "rows/1/" not in anonymous.get(f"/shared/{with_results}/results/?q=forty").text
    nothing = anonymous.get(f"/shared/{with_results}/results/?q=no-such-line").text
    assert "No rows match these filters." in nothing and "not kept" not in nothing  # an empty page is no missing one
    row = anonymous.get(f"/shared/{with_results}/results/rows/3/")
    assert row.status_code == 200
    assert "forty-two" in row.text
    assert "/batches/" not in row.text
    assert row["Referrer-Policy"] == "no-referrer"
    assert anonymous.get(f"/shared/{with_results}/results/rows/99/").status_code == 404


def test_exports_work_only_when_the_link_allows_them(viewer_client, anonymous, kept):
    without = make_link(viewer_client, kept.batch_id, results=True)
    allowed = make_link(viewer_client, kept.batch_id, results=True, exports=True)

    assert anonymous.get(f"/shared/{without}/results/export.csv").status_code == 404
    assert anonymous.get(f"/shared/{without}/results/export.jsonl").status_code == 404
    assert f"/shared/{allowed}/results/export.csv" in anonymous.get(f"/shared/{allowed}/results/").text
    exported = anonymous.get(f"/shared/{allowed}/results/export.csv")
    assert exported.status_code == 200
    text = b"".join(exported.streaming_content).decode()
    assert "forty-two" in text
    assert text.count("\n") == 4  # a header and three rows
    assert anonymous.get(f"/shared/{allowed}/results/export.jsonl").status_code == 200


def test_exports_without_results_are_refused_and_change_nothing(viewer_client, running):
    response = viewer_client.post("/batches/batch_shared/share-links/", {"hours": 24, "allow_exports": "on"})

    assert response.status_code == 400
    assert "include the results" in response.text
    assert not ShareLink.objects.exists()


@pytest.mark.parametrize("hours", ["0", "721", "9999", "", "one"])
def test_a_lifetime_outside_an_hour_to_30_days_is_refused(viewer_client, running, hours):
    response = viewer_client.post("/batches/batch_shared/share-links/", {"hours": hours})

    assert response.status_code == 400
    assert not ShareLink.objects.exists()


def test_a_link_reaches_no_other_batch(viewer_client, anonymous, running, kept):
    token = make_link(viewer_client, kept.batch_id, results=True, exports=True)
    other = "batch_shared"

    for path in (
        f"/shared/{token}/../{other}/",
        f"/shared/{token}/%2E%2E/{other}/",
        f"/shared/{token}/{other}/",
        f"/shared/{token}/results/../../{other}/",
        f"/shared/{token}/files/input/",
        f"/shared/{token}/cancel/",
        f"/shared/{other}/",
    ):
        response = anonymous.get(path)
        assert response.status_code == 404, path
        assert other not in response.text, path
    # The dashboard's own pages still ask for a login.
    for path in (f"/batches/{other}/", f"/batches/{kept.batch_id}/", f"/batches/{kept.batch_id}/results/"):
        assert anonymous.get(path).status_code == 302, path
    assert other not in anonymous.get(f"/shared/{token}/").text


def test_an_expired_link_answers_410_with_a_plain_page(viewer_client, anonymous, kept):
    token = make_link(viewer_client, kept.batch_id, results=True)
    ShareLink.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    for path in ("", "results/", "results/rows/1/"):
        response = anonymous.get(f"/shared/{token}/{path}")
        assert response.status_code == 410
        assert kept.batch_id not in response.text
        assert "expired or was revoked" in response.text
        assert response["X-Robots-Tag"].startswith("noindex")


def test_a_revoked_link_answers_410_at_once(viewer_client, anonymous, running):
    token = make_link(viewer_client, "batch_shared")
    assert anonymous.get(f"/shared/{token}/").status_code == 200
    link = ShareLink.objects.get()

    response = viewer_client.post(f"/batches/batch_shared/share-links/{link.pk}/revoke/")

    assert response.status_code == 302
    assert anonymous.get(f"/shared/{token}/").status_code == 410
    link.refresh_from_db()
    assert link.revoked_at is not None
    assert link.revoked_by_name == "viewer"
    assert "data-share-link" not in share_card(viewer_client, "batch_shared")
    assert AuditEvent.objects.filter(action=Action.SHARE_REVOKE, outcome="ok", username="viewer").count() == 1


def test_an_unknown_token_answers_404_alike_for_every_batch(anonymous, running):
    unknown = "A" * 43
    answers = [anonymous.get(f"/shared/{token}/") for token in (unknown, "short", "x" * 5000, "batch_shared")]

    assert [answer.status_code for answer in answers] == [404, 404, 404, 404]
    assert len({answer.text for answer in answers}) == 1
    assert "batch_shared" not in answers[0].text


def test_switched_off_nothing_is_made_and_no_link_opens(viewer_client, anonymous, running, settings):
    token = make_link(viewer_client, "batch_shared")
    settings.BATCHBOARD_PUBLIC_LINKS = False

    refused = viewer_client.post("/batches/batch_shared/share-links/", {"hours": 24})
    opened = anonymous.get(f"/shared/{token}/")

    assert refused.status_code == 403
    assert ShareLink.objects.count() == 1
    assert opened.status_code == 404
    assert "switched off" in opened.text
    assert "batch_shared" not in opened.text
    assert "switched off" in viewer_client.get("/batches/batch_shared/").text
    assert not AuditEvent.objects.filter(action=Action.SHARE_OPEN).exists()


def test_every_opening_is_audited_with_the_link_and_the_address(viewer_client, anonymous, kept):
    token = make_link(viewer_client, kept.batch_id, name="auditors", results=True)
    link = ShareLink.objects.get()

    anonymous.get(f"/shared/{token}/", REMOTE_ADDR="203.0.113.7")
    anonymous.get(f"/shared/{token}/results/", REMOTE_ADDR="203.0.113.8")
    anonymous.get(f"/shared/{token}/results/rows/1/", REMOTE_ADDR="203.0.113.8")
    anonymous.get(f"/shared/{token}/results/export.csv", REMOTE_ADDR="203.0.113.9")  # not allowed: refused

    openings = AuditEvent.objects.filter(action=Action.SHARE_OPEN, outcome="ok").order_by("pk")
    assert [(event.username, event.ip, event.batch_id, event.target) for event in openings] == [
        ("share link auditors", "203.0.113.7", kept.batch_id, "batch page"),
        ("share link auditors", "203.0.113.8", kept.batch_id, "results"),
        ("share link auditors", "203.0.113.8", kept.batch_id, "results row 1"),
    ]
    assert all(event.user is None for event in openings)
    refused = AuditEvent.objects.get(action=Action.SHARE_OPEN, outcome="refused")
    assert (refused.ip, refused.target) == ("203.0.113.9", "results export as csv")
    unnamed = make_link(viewer_client, kept.batch_id)
    anonymous.get(f"/shared/{unnamed}/")
    prefix = ShareLink.objects.exclude(pk=link.pk).get().token_hash[:8]
    assert AuditEvent.objects.filter(action=Action.SHARE_OPEN, username=f"share link {prefix}").count() == 1
    assert AuditEvent.objects.filter(action=Action.SHARE_CREATE, outcome="ok").count() == 2


def test_making_and_revoking_need_the_csrf_token(viewer, running):
    client = Client(enforce_csrf_checks=True)
    client.force_login(viewer)

    assert client.post("/batches/batch_shared/share-links/", {"hours": 24}).status_code == 403
    assert not ShareLink.objects.exists()
    link, _token = ShareLink.make(
        running, viewer, lifetime=timedelta(hours=1), allow_results=False, allow_exports=False
    )
    assert client.post(f"/batches/batch_shared/share-links/{link.pk}/revoke/").status_code == 403
    link.refresh_from_db()
    assert link.revoked_at is None


def test_a_viewer_cannot_revoke_someone_elses_link_but_an_operator_can(django_user_model, operator, running, client):
    maker = django_user_model.objects.create_user(username="maker", password="pw-maker")
    link, token = ShareLink.make(running, maker, lifetime=timedelta(days=1), allow_results=False, allow_exports=False)
    other = django_user_model.objects.create_user(username="other", password="pw-other")
    client.force_login(other)

    assert f'id="revoke-{link.pk}"' not in client.get("/batches/batch_shared/").text
    refused = client.post(f"/batches/batch_shared/share-links/{link.pk}/revoke/")
    assert refused.status_code == 403
    assert Client().get(f"/shared/{token}/").status_code == 200
    assert AuditEvent.objects.filter(action=Action.SHARE_REVOKE, outcome="refused", username="other").exists()

    client.force_login(operator)
    assert f'id="revoke-{link.pk}"' in client.get("/batches/batch_shared/").text
    assert client.post(f"/batches/batch_shared/share-links/{link.pk}/revoke/").status_code == 302
    assert Client().get(f"/shared/{token}/").status_code == 410


def test_a_link_revokes_only_under_its_own_batch(viewer_client, viewer, running):
    other = record_batch(completed("batch_other"))
    link, token = ShareLink.make(other, viewer, lifetime=timedelta(days=1), allow_results=False, allow_exports=False)

    assert viewer_client.post(f"/batches/batch_shared/share-links/{link.pk}/revoke/").status_code == 404
    assert Client().get(f"/shared/{token}/").status_code == 200


def test_the_detail_page_lists_working_links_with_expiry_and_maker(viewer_client, viewer, running):
    def make(name, **changes):
        link, _ = ShareLink.make(
            running, viewer, lifetime=timedelta(days=1), name=name, allow_results=True, allow_exports=False
        )
        ShareLink.objects.filter(pk=link.pk).update(**changes)

    make("working")
    make("ended", expires_at=timezone.now() - timedelta(minutes=1))
    make("revoked", revoked_at=timezone.now())

    card = share_card(viewer_client, "batch_shared")

    assert "working" in card
    assert "made by viewer" in card
    assert "page and results" in card
    assert "ended" not in card
    assert "revoked" not in card


def test_a_batch_has_at_most_50_working_links(viewer_client, viewer, running):
    for _ in range(MAX_ACTIVE_PER_BATCH):
        ShareLink.make(running, viewer, lifetime=timedelta(hours=1), allow_results=False, allow_exports=False)

    response = viewer_client.post("/batches/batch_shared/share-links/", {"hours": 1})

    assert response.status_code == 429
    assert ShareLink.objects.count() == MAX_ACTIVE_PER_BATCH
    ShareLink.objects.filter(pk=ShareLink.objects.first().pk).update(revoked_at=timezone.now())
    assert viewer_client.post("/batches/batch_shared/share-links/", {"hours": 1}).status_code == 201


@pytest.fixture
def log_records():
    """Every record of the loggers a request writes to (several do not propagate to the root), at every level."""
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in ("batches.requests", "django.request", "audit", "batches", "")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield records
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_no_log_line_carries_the_token(viewer_client, anonymous, running, log_records):
    token = make_link(viewer_client, "batch_shared")
    working = make_link(viewer_client, "batch_shared")
    ShareLink.objects.filter(token_hash=token_hash(token)).update(expires_at=timezone.now() - timedelta(seconds=1))

    anonymous.get(f"/shared/{token}/")
    anonymous.get(f"/shared/{working}/")
    anonymous.get(f"/shared/{working}/results/")
    anonymous.get(f"/shared/{token}/anything/else/")
    anonymous.get(f"/shared/{'B' * 43}/")

    lines = [(record.getMessage(), str(getattr(record, "path", ""))) for record in log_records]
    assert ("GET /shared/…/ 410", "/shared/…/") in lines
    assert ("GET /shared/…/results/ 404", "/shared/…/results/") in lines
    assert ("GET /shared/…/anything/else/ 404", "/shared/…/anything/else/") in lines
    assert not [line for line in lines if token in str(line) or working in str(line)]


def test_an_administrator_revokes_links_in_the_admin_audited(admin_client, viewer, running):
    link, token = ShareLink.make(running, viewer, lifetime=timedelta(days=1), allow_results=False, allow_exports=False)

    response = admin_client.post(
        "/admin/sharing/sharelink/", {"action": "revoke", "_selected_action": [link.pk]}, follow=True
    )

    assert "1 link(s) revoked" in response.text
    assert Client().get(f"/shared/{token}/").status_code == 410
    assert AuditEvent.objects.filter(action=Action.SHARE_REVOKE, outcome="ok", username="admin").count() == 1
    assert admin_client.get(f"/admin/sharing/sharelink/{link.pk}/change/").status_code == 200


def test_a_row_too_long_to_show_is_cut_without_a_link_to_the_dashboards_raw_line(viewer_client, anonymous, tmp_path):
    batch = kept_batch({"long": ("ok", "z" * (RENDER_BYTES + 1000))}, tmp_path)
    token = make_link(viewer_client, batch.batch_id, results=True)

    shared = anonymous.get(f"/shared/{token}/results/rows/1/")
    own = viewer_client.get(f"/batches/{batch.batch_id}/results/rows/1/")

    assert shared.status_code == own.status_code == 200
    assert "only its start is shown" in shared.text and "only its start is shown" in own.text
    raw_url = f"/batches/{batch.batch_id}/results/rows/1/result.jsonl"
    assert raw_url in own.text
    assert "Download the whole line" not in shared.text and "/batches/" not in shared.text
