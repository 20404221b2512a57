"""Every page through axe-core (the engine the axe browser extensions use), in light and dark colour schemes, at a
desktop's and a phone's width: no WCAG 2.1 A/AA violation, and no page that scrolls sideways."""

from datetime import timedelta

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.utils import timezone
from playwright.sync_api import expect

from api.models import ApiToken
from audit.models import Action, AuditEvent, Outcome
from batches.models import Batch, SavedView
from sharing.models import ShareLink
from tests.browser.conftest import PHONE, speed_for
from tests.conftest import kept_batch

WIDE = {"width": 1440, "height": 900}
VARIANTS = [("light", WIDE), ("dark", WIDE), ("light", PHONE), ("dark", PHONE)]
# The rules of WCAG 2.0 and 2.1, levels A and AA, and axe's best practices, as the axe extensions run them by default.
AXE_OPTIONS = {"resultTypes": ["violations"], "runOnly": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]}


def _violations(page) -> list[str]:
    results = Axe().run(page, options=AXE_OPTIONS)
    return [
        f"{violation['id']} ({violation['impact']}): {violation['help']} at {[n['target'] for n in violation['nodes']]}"
        for violation in results.response["violations"]
    ]


def _urls(live_server, make_batch, tmp_path, maker) -> list[str]:
    outcomes = {f"request-{n:02d}": "ok" for n in range(1, 9)}
    outcomes |= {"request-09": 500, "request-10": 400, "request-11": "expired"}
    finished = kept_batch(outcomes, tmp_path, metadata={"description": "Accessibility check"}).batch_id
    running = make_batch(speed_for(600)).id
    for batch_id in (finished, running):  # the side column's Activity card holds long unbroken words
        AuditEvent.objects.create(
            username="someone.with.a.long.single.sign.on.name@research.example.com",
            action=Action.CANCEL,
            batch_id=batch_id,
            outcome=Outcome.ERROR,
            detail=f"The OpenAI API said: no batch {running}{running} could be found for file-{'x' * 40}",
        )
    _link, token = ShareLink.make(
        Batch.objects.get(batch_id=finished), maker, lifetime=timedelta(days=1), allow_results=True, allow_exports=True
    )
    base = live_server.url
    return [
        f"{base}/shared/{token}/",
        f"{base}/shared/{token}/results/",
        f"{base}/shared/{token}/results/rows/10/",
        f"{base}/batches/",
        f"{base}/batches/?status=attention&q=accessibility",
        f"{base}/batches/{finished}/",
        f"{base}/batches/{running}/",
        f"{base}/batches/{finished}/results/",
        f"{base}/batches/{finished}/results/?outcome=failed",
        f"{base}/batches/{finished}/results/request-09/",
        f"{base}/batches/{finished}/results/request-01/",
        f"{base}/batches/{finished}/retry/",
        f"{base}/batches/{finished}/final/",
        f"{base}/batches/new/",
        f"{base}/batches/prices/",
        f"{base}/batches/time-zone/",
        f"{base}/batches/views/",
        f"{base}/batches/spending/",
        f"{base}/batches/{running}/cancel/",  # the confirm pages a browser without JavaScript gets
        f"{base}/batches/cancel/?batch_id=default/{running}",
        f"{base}/notifications/",
        f"{base}/api-tokens/",
    ]


def _notifications_of(user) -> None:
    """A paused destination with a subscription, a failed delivery and an event held: every part of the Notifications
    page."""
    from django.utils import timezone

    from notifications.models import Attempt, Destination, Kind, Notification, Scope, Subscription

    destination = Destination.objects.create(
        user=user,
        name="team channel",
        kind=Kind.APPRISE,
        target_encrypted="-",
        shown="slack://hooks.slack.com",
        paused_at=timezone.now(),
        consecutive_failures=5,
        last_error="Failed to send Slack notification: Internal server error., error=500.",
    )
    batch = Batch.objects.first()
    Subscription.objects.create(destination=destination, scope=Scope.BATCH, batch=batch, connection=batch.connection)
    notification = Notification.objects.create(destination=destination, batch=batch, event="finished:completed")
    Attempt.objects.create(notification=notification, ok=False, error=destination.last_error)
    held = Notification.objects.create(destination=destination, batch=batch, event="finished:failed", state="held")
    Attempt.objects.create(notification=held, ok=False, step="held")


@pytest.mark.parametrize(("scheme", "viewport"), VARIANTS, ids=["light-1440", "dark-1440", "light-390", "dark-390"])
def test_every_page_passes_axe_and_fits_the_screen(
    live_server, page, login, operator, make_batch, tmp_path, scheme, viewport
):
    urls = _urls(live_server, make_batch, tmp_path, operator)
    SavedView.objects.create(owner=operator, name="Failed this week", url="/batches/?status=failed")
    _notifications_of(operator)
    ApiToken.make(operator, name="nightly export", scopes=["read"], expires_at=timezone.now() + timedelta(days=30))
    login(operator)
    page.emulate_media(color_scheme=scheme)
    page.set_viewport_size(viewport)
    problems = {}
    for url in urls:
        page.goto(url)
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        found = _violations(page)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        if overflow > 0:
            found.append(f"scrolls sideways by {overflow}px")
        if found:
            problems[url.removeprefix(live_server.url)] = found
    assert not problems, "\n".join(f"{url}: {found}" for url, found in problems.items())


def test_the_login_page_passes_axe(live_server, page):
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        page.goto(f"{live_server.url}/accounts/login/?next=/batches/batch_abc/results/r-1/")
        assert _violations(page) == []


def test_the_login_page_with_single_sign_on_passes_axe(live_server, page, sso, settings):
    for local_login, query in ((True, ""), (False, ""), (False, "&local=1")):
        settings.BATCHBOARD_LOCAL_LOGIN = local_login
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            page.goto(f"{live_server.url}/accounts/login/?next=/batches/batch_abc/{query}")
            expect(page.get_by_role("link", name="Sign in with Example SSO")).to_be_visible()
            assert _violations(page) == []
