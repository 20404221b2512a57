"""The project starts: login is required, and the list renders even when the API is unreachable."""

import pytest
from django.test import override_settings

from batches import sync

pytestmark = pytest.mark.django_db


def test_it_redirects_anonymous_users_to_login(client):
    response = client.get("/batches/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/batches/")


@override_settings(OPENAI_BASE_URL="http://127.0.0.1:9/v1", OPENAI_MAX_RETRIES=0)
def test_it_renders_a_stale_list_when_the_api_is_unreachable(viewer_client):
    sync.run_pass(force=True)  # The sync loop's pass: pages themselves never call the API for the list.
    response = viewer_client.get("/batches/")
    assert response.status_code == 200
    assert b"Cannot reach the OpenAI API" in response.content
    assert b"Sandbox" in response.content
