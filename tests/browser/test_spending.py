"""The spending page and the list's budget banner in Chromium: on a desktop, in dark mode and on a phone."""

from datetime import timedelta
from decimal import Decimal

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.contrib.auth.models import Group
from django.utils import timezone
from playwright.sync_api import expect

from batches import services
from batches.models import Connection, record_batch
from tests.browser.conftest import PHONE, log_in

NO_SIDEWAYS_SCROLL = "() => document.documentElement.scrollWidth <= window.innerWidth"
AXE_OPTIONS = {"resultTypes": ["violations"], "runOnly": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]}


def _violations(page) -> list[str]:
    violations = Axe().run(page, options=AXE_OPTIONS).response["violations"]
    return [f"{v['id']}: {v['help']} at {[node['target'] for node in v['nodes']]}" for v in violations]


def _finished(batch_id, finished, input_tokens, model="gpt-4o-mini"):
    created = int((finished - timedelta(hours=1)).timestamp())
    return services.ApiBatch.from_api(
        {
            "id": batch_id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "model": model,
            "input_file_id": "file-in",
            "completion_window": "24h",
            "status": "completed",
            "created_at": created,
            "in_progress_at": created + 5,
            "completed_at": int(finished.timestamp()),
            "expires_at": created + 86_400,
            "request_counts": {"total": 10, "completed": 10, "failed": 0},
            "metadata": {},
            "usage": {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 0},
        }
    )


@pytest.fixture
def spender(django_user_model):
    """A member of the research team, which has spent 84 % of its $500 budget, and of a team sharing vision."""
    now = timezone.now()
    research = Connection.objects.create(
        name="Research", slug="research", monthly_budget=Decimal(500), configured=False
    )
    vision = Connection.objects.create(name="Vision", slug="vision", configured=False)
    research_team, platform = Group.objects.create(name="Research team"), Group.objects.create(name="Platform")
    research.view_teams.add(research_team, platform)
    vision.view_teams.add(platform)
    earlier = now - timedelta(minutes=5)
    last_month = now.replace(day=1) - timedelta(days=3)
    # $0.075 a million input tokens: $420 is 5,600 million.
    record_batch(_finished("batch_research_1", earlier, 5_600_000_000), connection=research)
    record_batch(_finished("batch_research_2", last_month, 2_000_000_000), connection=research)
    record_batch(_finished("batch_vision_1", earlier, 30_000_000), connection=vision)
    record_batch(_finished("batch_vision_2", earlier, 1_000_000, model="acme-model"), connection=vision)
    user = django_user_model.objects.create_user(username="spender", password="pw-spender")
    user.groups.add(research_team, platform)
    return user


def _logged_in(new_page, live_server, user, **options):
    page = new_page(**options)
    page.goto(f"{live_server.url}/accounts/login/")
    log_in(page, user)
    page.wait_for_url("**/batches/**")
    return page


def test_it_shows_the_banner_on_the_list_and_the_budget_on_the_spending_page(live_server, new_page, spender):
    page = _logged_in(new_page, live_server, spender)
    banner = page.locator("#budget-banner-research")
    expect(banner).to_contain_text("Research has used 84 % of its monthly budget of $500")
    page.locator("#summary-spending-link").click()
    page.wait_for_url("**/batches/spending/")
    research = page.locator("#connection-research")
    expect(research).to_contain_text("84 % of $500")
    expect(research.get_by_role("img", name="84 % of the monthly budget of $500 used")).to_be_visible()
    expect(page.get_by_role("region", name="Spending by team")).to_contain_text("Platform")


@pytest.mark.parametrize("color_scheme", ["light", "dark"])
@pytest.mark.parametrize("phone", [False, True], ids=["desktop", "phone"])
def test_the_spending_page_and_the_banner_pass_axe_and_fit_the_screen(
    live_server, new_page, spender, color_scheme, phone
):
    options = {"viewport": PHONE, "is_mobile": True, "has_touch": True} if phone else {}
    page = _logged_in(new_page, live_server, spender, color_scheme=color_scheme, **options)
    page.goto(f"{live_server.url}/batches/spending/")
    expect(page.locator("#connection-research")).to_contain_text("84 % of $500")
    assert page.evaluate(NO_SIDEWAYS_SCROLL), "the spending page scrolls sideways"
    assert not _violations(page)
    page.goto(f"{live_server.url}/batches/")
    expect(page.locator("#budget-banner-research")).to_be_visible()
    assert page.evaluate(NO_SIDEWAYS_SCROLL), "the list with a budget banner scrolls sideways"
    assert not _violations(page)
