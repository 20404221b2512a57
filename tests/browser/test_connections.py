"""The list of a viewer of two connections in Chromium: the connection column, the counts per connection, and the
connection filter applied on change."""

import re

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone
from playwright.sync_api import expect

from batches import services
from batches.freshness import LIST_STATE
from batches.models import Connection, ConnectionKind, ConnectionSource, SyncState, record_batches
from tests.batch_api import payload
from tests.browser.conftest import PHONE

SCREENSHOT = "list-two-connections.png"


@pytest.fixture
def two_connections(sandbox_url, monkeypatch, django_user_model):
    """Research (Azure) and Finance (OpenAI) with a few batches each, both synced just now, and a user in both
    teams."""
    monkeypatch.setenv("BROWSER_RESEARCH_KEY", "sk-sandbox")
    monkeypatch.setenv("BROWSER_FINANCE_KEY", "sk-sandbox-second")
    made = {}
    for name, kind, key in (
        ("Research", ConnectionKind.AZURE, "RESEARCH"),
        ("Finance", ConnectionKind.OPENAI, "FINANCE"),
    ):
        connection = Connection.objects.create(
            name=name,
            slug=name.lower(),
            kind=kind,
            source=ConnectionSource.ADMIN,
            base_url=sandbox_url,
            api_key_env=f"BROWSER_{key}_KEY",
        )
        team = Group.objects.create(name=name.lower())
        connection.view_teams.add(team)
        made[name] = (connection, team)
    now = timezone.now()
    for state in (LIST_STATE, *(connection.list_state for connection, _ in made.values())):
        SyncState.objects.update_or_create(
            name=state, defaults={"succeeded_at": now, "heartbeat_at": now, "claimed_at": now}
        )
    start = int(now.timestamp()) - 3600
    plan = {
        "Research": [("in_progress", "nightly eval"), ("in_progress", "tokenizer sweep"), ("failed", "bad schema")],
        "Finance": [("completed", "invoice triage"), ("expired", "ledger summaries"), ("in_progress", "receipts")],
    }
    shown = {}
    for name, batches in plan.items():
        connection, _ = made[name]
        payloads = [
            payload(status, created_at=start + 60 * n, metadata={"description": description})
            for n, (status, description) in enumerate(batches)
        ]
        record_batches([services.ApiBatch.from_api(data) for data in payloads], connection=connection)
        shown[name] = [data["id"] for data in payloads]
    user = django_user_model.objects.create_user("both", password="pw-both")
    user.groups.add(*(team for _, team in made.values()))
    return user, shown


def test_a_viewer_of_two_connections_sees_and_filters_them(login, two_connections, tmp_path):
    user, shown = two_connections
    page = login(user)

    expect(page.locator("th.col-connection")).to_have_text("Connection")
    for name, ids in shown.items():
        for batch_id in ids:
            expect(page.locator(f"tr#row-{batch_id} td.col-connection")).to_have_text(name)
    expect(page.locator("#connection-count-research")).to_contain_text("2 running")
    expect(page.locator("#connection-count-finance")).to_contain_text(
        "2 need attention"
    )  # expired, and 1 failed line in 5
    page.screenshot(path=str(tmp_path / SCREENSHOT), full_page=True)

    if page.locator("#filters-panel summary").is_visible():  # a toggle on narrow screens only
        page.locator("#filters-panel summary").click()
    page.get_by_label("Connection", exact=True).select_option("finance")  # applied on change, as the other filters are

    page.wait_for_url(re.compile(r"connection=finance"))
    expect(page.locator("tbody tr")).to_have_count(len(shown["Finance"]))
    expect(page.locator("#connection-count-finance a")).to_have_attribute("aria-current", "page")
    page.locator(f"tr#row-{shown['Finance'][0]} a.mono").first.click()
    page.wait_for_url(re.compile(rf"/batches/{shown['Finance'][0]}/\?connection=finance"))
    expect(page.locator("#connection-line")).to_have_text(re.compile(r"Connection: Finance\s+\(OpenAI\)"))
    page.screenshot(path=str(tmp_path / "detail-two-connections.png"), full_page=True)


AXE_OPTIONS = {"resultTypes": ["violations"], "runOnly": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]}


@pytest.mark.parametrize("viewport", [{"width": 1440, "height": 900}, PHONE], ids=["desktop", "phone"])
def test_the_pages_of_two_connections_pass_axe_and_fit_the_screen(
    live_server, login, two_connections, viewport, tmp_path
):
    from axe_playwright_python.sync_playwright import Axe

    user, shown = two_connections
    for connection in Connection.objects.exclude(slug="default"):
        connection.create_teams.add(*user.groups.all())
    page = login(user)
    page.set_viewport_size(viewport)
    problems = {}
    for path in ("/batches/", "/batches/?connection=research", f"/batches/{shown['Research'][0]}/", "/batches/new/"):
        page.goto(live_server.url + path)
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        results = Axe().run(page, options=AXE_OPTIONS)
        found = [
            f"{v['id']}: {v['help']} at {[n['target'] for n in v['nodes']]}" for v in results.response["violations"]
        ]
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        if overflow > 0:
            found.append(f"scrolls sideways by {overflow}px")
        if found:
            problems[path] = found
        page.screenshot(path=str(tmp_path / f"{path.strip('/').replace('/', '_') or 'list'}.png"), full_page=True)
    assert not problems, "\n".join(f"{path}: {found}" for path, found in problems.items())
