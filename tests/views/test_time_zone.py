"""Times: UTC and 24-hour unless the viewer picks a zone, said once in the footer; the choice applies everywhere."""

import pytest

pytestmark = pytest.mark.django_db


def test_it_shows_utc_and_says_so_once(api, viewer_client):
    batch = api.add("in_progress", created_at=1_700_000_000)  # 2023-11-14 22:13:20 UTC
    html = viewer_client.get(f"/batches/{batch['id']}/").content.decode()

    assert html.count("Times are UTC, 24-hour") == 1
    assert "2023-11-14 22:13:20" in html  # 24-hour, no AM/PM
    assert " PM" not in html and " AM" not in html


def test_it_shows_the_zone_the_viewer_picked(api, viewer_client):
    batch = api.add("in_progress", created_at=1_700_000_000)
    response = viewer_client.post("/batches/time-zone/", {"time_zone": "Asia/Tokyo", "next": "/batches/"})
    assert response.status_code == 302 and response["Location"] == "/batches/"

    html = viewer_client.get(f"/batches/{batch['id']}/").content.decode()
    assert "Times are Asia/Tokyo, 24-hour" in html
    assert "2023-11-15 07:13:20" in html  # UTC+9
    assert 'data-time-zone="Asia/Tokyo"' in html  # the "Updated" stamp of live.js follows it

    viewer_client.post("/batches/time-zone/", {"time_zone": "UTC"})
    assert "Times are UTC, 24-hour" in viewer_client.get("/batches/").content.decode()


def test_it_keeps_the_zone_for_the_user_across_sessions(api, client, viewer):
    batch = api.add("in_progress", created_at=1_700_000_000)
    client.force_login(viewer)
    client.post("/batches/time-zone/", {"time_zone": "Asia/Tokyo"})
    client.logout()

    client.post("/accounts/login/", {"username": viewer.username, "password": "pw-viewer"})
    html = client.get(f"/batches/{batch['id']}/").content.decode()
    assert "Times are Asia/Tokyo, 24-hour" in html and "2023-11-15 07:13:20" in html

    client.post("/batches/time-zone/", {"time_zone": "UTC"})
    client.logout()
    client.post("/accounts/login/", {"username": viewer.username, "password": "pw-viewer"})
    assert "Times are UTC, 24-hour" in client.get("/batches/").content.decode()


def test_it_refuses_an_unknown_zone_and_changes_nothing(viewer_client):
    response = viewer_client.post("/batches/time-zone/", {"time_zone": "Mars/Olympus", "next": "https://evil.example/"})
    assert response.status_code == 400
    assert "is not a time zone batchboard knows" in response.content.decode()
    assert "Times are UTC" in viewer_client.get("/batches/").content.decode()


def test_it_never_serves_one_zone_the_table_rendered_for_another(api, viewer_client, client, django_user_model):
    api.add("in_progress", created_at=1_700_000_000)
    viewer_client.post("/batches/time-zone/", {"time_zone": "Asia/Tokyo"})
    assert "2023-11-15 07:13:20 JST" in viewer_client.get("/batches/", HTTP_HX_REQUEST="true").content.decode()

    other = django_user_model.objects.create_user("utc-viewer", password="pw-utc-viewer")
    client.force_login(other)
    assert "2023-11-14 22:13:20 UTC" in client.get("/batches/", HTTP_HX_REQUEST="true").content.decode()
