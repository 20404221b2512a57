"""Single sign-on in Chromium against a real OpenID provider (oidc-provider-mock, one per test session): the button,
the provider's page and back, groups from the claim, logout, a refused user, and a link opened before logging in
that is still where the sign-in ends."""

import re
import uuid

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from batches import lookups
from tests.browser.conftest import DESKTOP
from tests.conftest import create_batches

# How the sign-in renders and round-trips in a browser; the rules (matching, groups, refusals) are tested on both


@pytest.fixture
def sso_page(browser, sandbox_url, sso):
    """A page in a browser context of its own, as tests/browser/conftest.py's new_page makes them, failing the test
    on a browser error unless the test lists it in `page.expected_errors`. The provider's page links a stylesheet
    on a CDN (the tests run offline): the browser gets an empty one."""
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(15_000)
    context.route("https://cdn.jsdelivr.net/**", lambda route: route.fulfill(content_type="text/css", body=""))
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.expected_errors = []
    yield page
    context.close()
    assert [error for error in errors if error not in page.expected_errors] == [], f"browser errors: {errors}"


def _subject() -> str:
    return f"sub-{uuid.uuid4().hex[:12]}"


def _authorize_at_provider(page, provider, sub):
    """On the provider's authorization page: sign in as `sub`."""
    page.wait_for_url(f"{provider.url}/oauth2/authorize**")
    page.get_by_label("Subject").fill(sub)
    page.get_by_role("button", name="Authorize", exact=True).click()


def test_it_signs_in_with_the_provider_without_a_password_form_and_logs_out(live_server, sso_page, sso, settings):
    settings.BATCHBOARD_LOCAL_LOGIN = False
    sub = sso.add_user(_subject(), preferred_username="ada", email="ada@example.com", groups=["ops", "research"])
    page = sso_page
    page.goto(f"{live_server.url}/accounts/login/")
    expect(page.get_by_label("Password")).to_have_count(0)
    page.get_by_role("link", name="Sign in with Example SSO").click()
    _authorize_at_provider(page, sso, sub)

    page.wait_for_url(f"{live_server.url}/batches/")
    expect(page.locator(".who")).to_have_text("ada")
    assert set(User.objects.get(username="ada").groups.values_list("name", flat=True)) == {"ops", "research"}

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/accounts/login/$"))
    page.goto(f"{live_server.url}/batches/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/batches/$"))


def test_a_user_in_none_of_the_required_groups_sees_why_and_is_not_signed_in(live_server, sso_page, sso, settings):
    settings.BATCHBOARD_OIDC_REQUIRED_GROUPS = ["batchboard-users"]
    sub = sso.add_user(_subject(), preferred_username="eve", groups=["marketing"])
    page = sso_page
    # The refusal is a 403 page, which Chromium reports as a failed load.
    page.expected_errors = ["Failed to load resource: the server responded with a status of 403 (Forbidden)"]
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_role("link", name="Sign in with Example SSO").click()
    _authorize_at_provider(page, sso, sub)

    expect(page.get_by_role("heading", level=1)).to_have_text("Not signed in")
    expect(page.get_by_role("alert")).to_contain_text("not in a group that may use batchboard")
    page.goto(f"{live_server.url}/batches/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))


def test_a_batch_link_opened_before_signing_in_is_where_the_sign_in_ends(live_server, sso_page, sso):
    batch = create_batches(1)[0]
    lookups.refresh_batch(batch.id)
    sub = sso.add_user(_subject(), preferred_username="bo")
    page = sso_page
    page.goto(f"{live_server.url}/batches/{batch.id}/")  # a colleague's link, opened by someone not logged in

    expect(page.get_by_role("heading", level=1)).to_contain_text(f"Log in to see {batch.id}")
    page.get_by_role("link", name="Sign in with Example SSO").click()
    _authorize_at_provider(page, sso, sub)

    page.wait_for_url(f"{live_server.url}/batches/{batch.id}/")
    expect(page.get_by_role("heading", level=1)).to_contain_text(batch.id)


def test_logging_out_goes_on_to_the_providers_logout_when_asked(live_server, sso_page, sso, settings):
    settings.BATCHBOARD_OIDC_PROVIDER_LOGOUT = True
    # As dashboard/settings.py allows it for BATCHBOARD_OIDC_PROVIDER_LOGOUT (tests/accounts/test_settings.py).
    settings.SECURE_CSP = {**settings.SECURE_CSP, "form-action": [*settings.SECURE_CSP["form-action"], sso.url]}
    sub = sso.add_user(_subject(), preferred_username="cy")
    page = sso_page
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_role("link", name="Sign in with Example SSO").click()
    _authorize_at_provider(page, sso, sub)
    page.wait_for_url(f"{live_server.url}/batches/")

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{sso.url}/oauth2/end_session?**")
    page.get_by_role("button", name=re.compile("log ?out|sign ?out|end session|confirm", re.IGNORECASE)).first.click()
    page.wait_for_url(f"{live_server.url}/accounts/login/**")
    page.goto(f"{live_server.url}/batches/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/batches/$"))
