"""Saved views: a list or results URL under a name, in the owner's navigation and, shared, in their team's; an odd
URL, name or team saves nothing and says why."""

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from batches.models import SavedView

pytestmark = pytest.mark.django_db


def _nav(client, url="/batches/prices/") -> str:
    html = client.get(url).content.decode()
    return html.split('<nav aria-label="Main">')[1].split("</nav>")[0]


def test_it_saves_the_list_with_its_filters_and_shows_it_in_the_navigation(viewer_client):
    url = "/batches/?status=failed&q=team%3Aresearch&sort=-created&page=3"
    response = viewer_client.post("/batches/views/save/", {"url": url, "name": "  Research\nfailures  "})
    assert (
        response.status_code == 302
        and response["Location"] == "/batches/?status=failed&q=team%3Aresearch&sort=-created"
    )
    view = SavedView.objects.get()
    assert view.name == "Research failures" and "page=" not in view.url
    nav = _nav(viewer_client)
    assert 'href="/batches/?status=failed&amp;q=team%3Aresearch&amp;sort=-created">Research failures</a>' in nav
    assert viewer_client.get(view.url).status_code == 200


def test_it_saves_a_results_page(viewer_client):
    viewer_client.post("/batches/views/save/", {"url": "/batches/batch_abc/results/?outcome=failed", "name": "Fails"})
    assert SavedView.objects.get().url == "/batches/batch_abc/results/?outcome=failed"


@pytest.mark.parametrize(
    "url",
    ["https://evil.example/batches/", "//evil.example/batches/", "/admin/", "/batches/batch_abc/", "batches/", ""],
)
def test_it_refuses_any_other_url_and_saves_nothing(viewer_client, url):
    response = viewer_client.post("/batches/views/save/", {"url": url, "name": "x"}, follow=True)
    assert "nothing was saved" in response.content.decode()
    assert not SavedView.objects.exists()


def test_it_refuses_an_empty_name_a_duplicate_and_a_team_the_user_is_not_in(viewer_client, viewer):
    assert (
        "needs a name"
        in viewer_client.post(
            "/batches/views/save/", {"url": "/batches/", "name": " \x00 "}, follow=True
        ).content.decode()
    )
    viewer_client.post("/batches/views/save/", {"url": "/batches/", "name": "All"})
    again = viewer_client.post("/batches/views/save/", {"url": "/batches/?status=failed", "name": "All"}, follow=True)
    assert "already have a view named" in again.content.decode()
    other = Group.objects.create(name="other team")
    refused = viewer_client.post(
        "/batches/views/save/", {"url": "/batches/", "name": "Shared", "team": str(other.pk)}, follow=True
    )
    assert "only with a team you belong to" in refused.content.decode()
    assert list(SavedView.objects.values_list("name", flat=True)) == ["All"]


def test_a_view_shared_with_a_team_is_in_every_members_navigation_only(client, viewer, operator, django_user_model):
    research = Group.objects.create(name="research")
    viewer.groups.add(research)
    operator.groups.add(research)
    outsider = django_user_model.objects.create_user(username="outsider", password="pw-outsider")
    client.force_login(viewer)
    client.post("/batches/views/save/", {"url": "/batches/?q=team:research", "name": "Ours", "team": str(research.pk)})
    client.post("/batches/views/save/", {"url": "/batches/?status=failed", "name": "Mine"})

    client.force_login(operator)
    nav = _nav(client)
    assert "Ours" in nav and "research" in nav and "Mine" not in nav
    client.force_login(outsider)
    assert "Saved views" not in _nav(client)


def test_only_the_owner_can_delete_a_view(client, viewer, operator):
    team = Group.objects.create(name="research")
    viewer.groups.add(team)
    operator.groups.add(team)
    view = SavedView.objects.create(owner=viewer, name="Ours", url="/batches/", team=team)
    client.force_login(operator)
    page = client.get("/batches/views/").content.decode()
    assert "Ours" in page and "Delete Ours" not in page
    refused = client.post(f"/batches/views/{view.pk}/delete/", follow=True)
    assert "not yours to delete" in refused.content.decode() and SavedView.objects.exists()
    client.force_login(viewer)
    client.post(f"/batches/views/{view.pk}/delete/")
    assert not SavedView.objects.exists()


def test_it_needs_a_login_and_a_post(viewer_client):
    anonymous = Client()
    assert anonymous.get("/batches/views/").status_code == 302
    assert anonymous.post("/batches/views/save/", {"url": "/batches/", "name": "x"}).status_code == 302
    assert viewer_client.get("/batches/views/save/").status_code == 405
    assert not SavedView.objects.exists()


def test_it_refuses_a_post_without_the_csrf_token(viewer):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(viewer)
    assert strict.post("/batches/views/save/", {"url": "/batches/", "name": "x"}).status_code == 403
    assert not SavedView.objects.exists()
