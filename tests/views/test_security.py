"""Security defaults: login everywhere, a strict CSP, nothing from a CDN, the sandbox only where it is the upstream."""

import importlib
import json
import re
from pathlib import Path

import pytest
from django.test import override_settings
from django.urls import clear_url_caches, reverse

import dashboard.urls
from batches import services
from batches.models import record_batch
from tests.reference import EXAMPLES

pytestmark = pytest.mark.django_db

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


@pytest.fixture
def a_batch():
    return record_batch(services.ApiBatch.from_api(json.loads((EXAMPLES / "batch.completed.json").read_text())))


def _dashboard_urls(batch_id):
    return [
        reverse("batches:list"),
        reverse("batches:create"),
        reverse("batches:detail", args=[batch_id]),
        reverse("batches:cancel", args=[batch_id]),
        reverse("batches:file", args=[batch_id, "output"]),
        "/admin/",
    ]


def test_it_requires_login_for_every_page(client, a_batch):
    for url in _dashboard_urls(a_batch.batch_id):
        response = client.get(url)
        assert response.status_code == 302, url
        assert "/login/" in response["Location"], url


def test_it_requires_login_for_every_post(client, a_batch):
    for url in (reverse("batches:cancel", args=[a_batch.batch_id]), reverse("batches:bulk_cancel")):
        response = client.post(url, {"batch_id": a_batch.batch_id})
        assert response.status_code == 302, url
        assert "/login/" in response["Location"], url


def test_it_sends_a_strict_content_security_policy(viewer_client, a_batch):
    response = viewer_client.get(reverse("batches:detail", args=[a_batch.batch_id]))
    policy = response["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
    assert directives["default-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert re.fullmatch(r"'self' 'nonce-[^']+'", directives["script-src"])
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert directives["frame-ancestors"] == "'none'"
    assert response["X-Frame-Options"] == "DENY"
    # The only inline script is htmx's own tag, carrying the nonce of this response.
    nonce = re.search(r"'nonce-([^']+)'", policy).group(1)
    for tag in re.findall(r"<script[^>]*>", response.content.decode()):
        assert f'nonce="{nonce}"' in tag or "src=" in tag, tag


def test_it_loads_nothing_from_another_origin():
    for template in TEMPLATES.rglob("*.html"):
        text = template.read_text()
        assert not re.search(r"""(src|href)=["'](https?:)?//""", text), template


def test_it_serves_the_sandbox_only_when_it_is_the_upstream(client):
    assert client.get("/sandbox/v1/batches").status_code == 401  # mounted: it wants its bearer key
    try:
        with override_settings(SANDBOX_ENABLED=False):
            importlib.reload(dashboard.urls)
            clear_url_caches()
            assert client.get("/sandbox/v1/batches", HTTP_AUTHORIZATION="Bearer sk-sandbox").status_code == 404
    finally:
        importlib.reload(dashboard.urls)
        clear_url_caches()
