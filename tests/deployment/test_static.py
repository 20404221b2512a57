"""Static files: hashed names once `collectstatic` has run; a fresh clone under `runserver` still serves every page."""

import pytest
from django.core.management import call_command

# Static files and their names: a second database changes nothing.
pytestmark = [pytest.mark.django_db, pytest.mark.once]

STYLESHEET = "/static/css/"


@pytest.fixture
def manifest_storage(settings, tmp_path):
    """The production storage (not the tests' plain one) over an empty STATIC_ROOT, as in a fresh clone."""
    settings.STATIC_ROOT = tmp_path / "staticfiles"
    settings.STATIC_ROOT.mkdir()
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": "dashboard.storage.StaticFilesStorage"}}
    settings.WHITENOISE_USE_FINDERS = True
    return settings


def _stylesheet(html: str) -> str:
    start = html.index(STYLESHEET)
    return html[start : html.index('"', start)]


def test_pages_link_and_serve_the_plain_files_before_collectstatic(manifest_storage, client):
    response = client.get("/accounts/login/")

    assert response.status_code == 200
    stylesheet = _stylesheet(response.text)
    assert stylesheet == "/static/css/base.css"
    assert client.get(stylesheet).status_code == 200


def test_pages_link_the_hashed_files_after_collectstatic(manifest_storage, client):
    call_command("collectstatic", "--no-input", verbosity=0)
    manifest_storage.WHITENOISE_USE_FINDERS = False

    response = client.get("/accounts/login/")

    assert response.status_code == 200
    stylesheet = _stylesheet(response.text)
    assert stylesheet.startswith("/static/css/base.") and stylesheet != "/static/css/base.css"
    assert client.get(stylesheet).status_code == 200
