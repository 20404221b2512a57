"""Polls of the list's table share one rendering until the data, the freshness or the user's permissions differ."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from batches import sync
from batches.models import Batch, data_version, record_batch
from tests.conftest import observation
from tests.fake_api import Reply
from tests.views.list_page import logged_in, recorded, row_of

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("shared_renderings")]

POLL = {"HX-Request": "true"}


def _poll(client, url="/batches/"):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, headers=POLL)
    assert response.status_code in (200, 286)
    return response, len(queries)


def test_it_renders_the_table_once_for_every_viewer_polling_the_same_url(api, viewer, django_user_model):
    batch = api.add("in_progress")
    other = django_user_model.objects.create_user(username="other-viewer", password="pw")

    first, rendering = _poll(logged_in(viewer))
    second, shared = _poll(logged_in(other))

    assert second.content == first.content and batch["id"] in second.text
    assert shared < rendering  # the second poll read the data's version, not the data
    # Nothing secret is shared: the fragment carries no CSRF token (htmx sends the one on <body>).
    assert "csrf" not in first.text.lower()
    assert _poll(logged_in(other), "/batches/?status=completed")[0].text != first.text  # another URL, another table


def test_it_shows_a_change_at_the_next_poll(api, viewer_client):
    batch = api.add("in_progress", request_counts={"total": 5, "completed": 2, "failed": 0})
    assert "2 / 5" in row_of(_poll(viewer_client)[0].text, batch["id"])

    recorded(batch, request_counts={"total": 5, "completed": 4, "failed": 0})
    newer = api.add("validating")

    html = _poll(viewer_client)[0].text
    assert "4 / 5" in row_of(html, batch["id"])
    assert f'id="row-{newer["id"]}"' in html


def test_it_shows_a_cancel_claimed_or_released_at_the_next_poll(api, operator_client):
    first, second = api.add("in_progress"), api.add("in_progress")
    now = timezone.now()
    # What actions.cancel_batch does before it calls the API, and undoes when the call fails.
    Batch.objects.filter(batch_id=first["id"]).update(cancel_requested_at=now - timedelta(seconds=5))
    Batch.objects.filter(batch_id=second["id"]).update(cancel_requested_at=now)
    html = _poll(operator_client)[0].text
    assert "cancel requested" in row_of(html, first["id"]) and "cancel requested" in row_of(html, second["id"])

    Batch.objects.filter(batch_id=first["id"]).update(cancel_requested_at=None)  # not the newest claim

    html = _poll(operator_client)[0].text
    assert "cancel requested" not in row_of(html, first["id"])
    assert f'hx-post="/batches/{first["id"]}/cancel/"' in row_of(html, first["id"])
    assert "cancel requested" in row_of(html, second["id"])


def _user_who_may(django_user_model, codename: str):
    user = django_user_model.objects.create_user(username=f"may-{codename}", password="pw")
    user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def test_it_does_not_share_a_table_between_users_who_may_do_different_things(api, viewer, django_user_model):
    canceller = _user_who_may(django_user_model, "cancel_batch")
    batch = api.add("in_progress")

    as_canceller = _poll(logged_in(canceller))[0].text
    as_viewer = _poll(logged_in(viewer))[0].text
    again_as_canceller = _poll(logged_in(canceller))[0].text

    assert f'hx-post="/batches/{batch["id"]}/cancel/"' in row_of(as_canceller, batch["id"])
    assert "/cancel/" not in row_of(as_viewer, batch["id"]) and "data-select" not in as_viewer
    assert again_as_canceller == as_canceller


def test_it_does_not_share_an_empty_table_between_users_who_may_create_or_not(api, viewer, django_user_model):
    creator = _user_who_may(django_user_model, "create_batch")

    as_creator = _poll(logged_in(creator))[0].text
    as_viewer = _poll(logged_in(viewer))[0].text

    assert "Create the first one" in as_creator and "Create the first one" not in as_viewer


def test_it_keeps_stopping_the_polls_with_286_when_it_answers_from_the_cache(api, viewer_client):
    api.add("completed")

    first, _ = _poll(viewer_client)
    again, _ = _poll(viewer_client)

    assert first.status_code == again.status_code == 286
    assert "hx-trigger" not in re.search(r'<div id="batch-table"[^>]*>', again.text).group(0)


def test_it_shows_that_the_api_is_failing_at_the_next_poll(api, viewer_client):
    api.add("in_progress")
    assert "Cannot reach the OpenAI API" not in _poll(viewer_client)[0].text

    api.list_reply = Reply(503, {"error": {"message": "overloaded", "type": "server_error"}})
    sync.run_pass(force=True)  # the sync loop's next pass

    response, _ = _poll(viewer_client)
    assert "Cannot reach the OpenAI API" in response.text
    assert re.search(r'data-live-retry="\d+"', response.text)


class TestDataVersion:
    def test_it_changes_when_a_batch_is_added_or_changed(self):
        record_batch(observation("batch_v0"))
        before = data_version()
        record_batch(observation("batch_v1", processed=1))
        added = data_version()
        record_batch(observation("batch_v1", processed=1))  # the same state again: nothing to show
        assert data_version() == added
        record_batch(observation("batch_v1", processed=2))
        changed = data_version()
        # A racing writer's observation, older than the newest change, still adds a row to the list.
        record_batch(observation("batch_v2"), observed_at=timezone.now() - timedelta(minutes=5))

        assert len({before, added, changed, data_version()}) == 4

    def test_it_changes_when_a_cancel_is_claimed_or_released(self):
        for batch_id in ("batch_v1", "batch_v2"):
            record_batch(observation(batch_id))
        unclaimed = data_version()
        now = timezone.now()
        Batch.objects.filter(batch_id="batch_v1").update(cancel_requested_at=now - timedelta(seconds=1))
        Batch.objects.filter(batch_id="batch_v2").update(cancel_requested_at=now)
        claimed = data_version()
        Batch.objects.filter(batch_id="batch_v1").update(cancel_requested_at=None)

        assert len({unclaimed, claimed, data_version()}) == 3
