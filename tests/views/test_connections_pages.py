"""Pages across connections: the list's connection column, filter and counts per connection; the connection on each
batch page; the page for an id in two connections; the audit log and /metrics per connection; the create page's
choice of connection."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.db import connection as db_connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.models import Action, AuditEvent, Outcome
from batches import services
from batches.models import Batch, Connection, ConnectionKind, ConnectionSource, SavedView, SyncState, record_batches
from tests.batch_api import payload
from tests.conftest import kept_batch
from tests.views.list_page import row_of

pytestmark = pytest.mark.django_db


class Two:
    """Two connections besides the default one (closed to everyone here): Research (Azure) and Finance (OpenAI),
    a team for each, and users: a viewer of Research, a viewer of both, a superuser."""

    def __init__(self, django_user_model, base_url: str):
        default = Connection.objects.default()
        default.open_to_everyone = False
        default.save()
        self.research = Connection.objects.create(
            name="Research",
            slug="research",
            kind=ConnectionKind.AZURE,
            source=ConnectionSource.ADMIN,
            base_url=base_url,
            api_key_env="PAGES_RESEARCH_KEY",
        )
        self.finance = Connection.objects.create(
            name="Finance",
            slug="finance",
            kind=ConnectionKind.OPENAI,
            source=ConnectionSource.ADMIN,
            base_url=base_url,
            api_key_env="PAGES_FINANCE_KEY",
        )
        self.research_team = Group.objects.create(name="research")
        self.finance_team = Group.objects.create(name="finance")
        self.research.view_teams.add(self.research_team)
        self.finance.view_teams.add(self.finance_team)
        self.researcher = django_user_model.objects.create_user("researcher", password="pw")
        self.researcher.groups.add(self.research_team)
        self.both = django_user_model.objects.create_user("both", password="pw")
        self.both.groups.add(self.research_team, self.finance_team)
        self.root = django_user_model.objects.create_superuser("root", password="pw")
        now = timezone.now()
        for connection in (self.research, self.finance):  # both loops alive, as fresh_cache makes the default's
            SyncState.objects.create(
                name=connection.list_state,
                claimed_at=now,
                succeeded_at=now,
                heartbeat_at=now,
                watched_at=now + timedelta(hours=1),
            )

    def add(self, connection: Connection, status: str = "completed", **fields) -> dict:
        if status == "completed":  # the example has a failed line in five: attention; these are clean
            fields.setdefault("request_counts", {"total": 5, "completed": 5, "failed": 0})
        data = payload(status, **fields)
        record_batches([services.ApiBatch.from_api(data)], connection=connection)
        return data

    @staticmethod
    def client(user) -> Client:
        client = Client()
        client.force_login(user)
        return client


@pytest.fixture
def two(django_user_model, monkeypatch, fresh_cache):
    monkeypatch.setenv("PAGES_RESEARCH_KEY", "sk-sandbox")
    monkeypatch.setenv("PAGES_FINANCE_KEY", "sk-sandbox-second")
    return Two(django_user_model, "http://127.0.0.1:9/v1")


# The list


def test_it_shows_a_connection_column_to_a_viewer_of_several(two):
    research = two.add(two.research, "in_progress")
    finance = two.add(two.finance, "failed")

    html = two.client(two.both).get("/batches/").text

    assert '<th scope="col" class="col-connection">Connection</th>' in html
    assert ">Research</td>" in row_of(html, research["id"]) and ">Finance</td>" in row_of(html, finance["id"])
    assert f'href="/batches/{research["id"]}/?connection=research"' in row_of(html, research["id"])
    assert 'id="filter-connection"' in html


def test_it_keeps_the_list_of_a_viewer_of_one_connection_as_it_was(two):
    research = two.add(two.research, "in_progress")
    two.add(two.finance, "in_progress")

    html = two.client(two.researcher).get("/batches/").text

    assert "col-connection" not in html and 'id="filter-connection"' not in html and "connection-counts" not in html
    assert f'href="/batches/{research["id"]}/"' in row_of(html, research["id"])
    assert html.count('<tr id="row-') == 1


def test_an_empty_connection_kept_for_its_history_does_not_make_a_viewer_of_one_a_viewer_of_several(two):
    """A connections file's install: "default" stays, open to everyone but unconfigured; empty, it is not shown."""
    Connection.objects.filter(slug="default").update(open_to_everyone=True, configured=False)
    research = two.add(two.research, "in_progress")

    html = two.client(two.researcher).get("/batches/").text
    assert "col-connection" not in html and 'id="filter-connection"' not in html
    assert f'href="/batches/{research["id"]}/"' in row_of(html, research["id"])

    two.add(Connection.objects.default(), "completed")  # its history: now there is something to tell apart
    assert "col-connection" in two.client(two.researcher).get("/batches/").text


def test_it_filters_by_connection_and_counts_within_it(two):
    research = [two.add(two.research, status) for status in ("in_progress", "failed", "completed")]
    finance = two.add(two.finance, "in_progress")
    client = two.client(two.both)

    for headers in ({}, {"HX-Request": "true"}):
        html = client.get("/batches/?connection=research", headers=headers).text
        assert all(f'id="row-{batch["id"]}"' in html for batch in research)
        assert f'id="row-{finance["id"]}"' not in html
    html = client.get("/batches/?connection=research").text
    assert re.search(r'id="status-chip-all"[^>]*>all <span class="count">3<', html)
    assert '<option value="research" selected>' in html
    assert "Filters (1)" in html


@pytest.mark.parametrize("slug", ["nowhere", "finance", "%3Cb%3E"])
def test_it_ignores_an_unknown_or_hidden_connection_with_a_notice(two, slug):
    research = two.add(two.research, "in_progress")
    two.add(two.finance, "in_progress")

    response = two.client(two.researcher).get(f"/batches/?connection={slug}")

    assert response.status_code == 200
    assert "showing every connection." in response.text
    assert f'id="row-{research["id"]}"' in response.text and response.text.count('<tr id="row-') == 1
    assert "<b>" not in response.text.split("showing every connection")[0].rsplit("notice", 1)[-1]


def test_it_counts_running_and_attention_per_connection(two):
    for status in ("in_progress", "in_progress", "failed"):
        two.add(two.research, status)
    two.add(two.finance, "expired")
    two.add(two.finance, "completed")

    html = two.client(two.both).get("/batches/").text

    research = re.search(r'<li id="connection-count-research">(.*?)</li>', html, re.S).group(1)
    finance = re.search(r'<li id="connection-count-finance">(.*?)</li>', html, re.S).group(1)
    assert "2 running" in research and "1 needs attention" in research and "3 in all" in research
    assert "0 running" in finance and "1 needs attention" in finance and "2 in all" in finance
    assert 'href="?connection=research"' in research


def test_it_never_shares_counts_per_connection_between_scopes(two):
    two.add(two.research, "in_progress")
    two.add(two.finance, "in_progress")
    two.add(Connection.objects.default(), "in_progress")
    assert 'id="connection-count-default"' in two.client(two.root).get("/batches/").text  # cached for its scope

    html = two.client(two.both).get("/batches/").text

    assert "connection-count-default" not in html  # the superuser's scope has it; this viewer's does not
    assert html.count('<tr id="row-') == 2
    assert 'id="connection-count-research"' in html and 'id="connection-count-finance"' in html


@pytest.mark.parametrize("headers", [{}, {"HX-Request": "true"}], ids=["page", "fragment"])
def test_the_list_of_several_connections_costs_the_same_queries_for_few_or_many_batches(two, headers):
    client = two.client(two.both)

    def queries(url):
        cache.clear()
        with CaptureQueriesContext(db_connection) as captured:
            assert client.get(url, headers=headers).status_code in (200, 286)
        return len(captured)

    two.add(two.research, "in_progress")
    two.add(two.finance, "failed")
    few = [queries(url) for url in ("/batches/", "/batches/?connection=finance")]
    for n in range(60):
        two.add((two.research, two.finance)[n % 2], ("in_progress", "completed", "failed")[n % 3])
    many = [queries(url) for url in ("/batches/", "/batches/?connection=finance")]

    assert few == many


def test_a_saved_view_keeps_the_connection_filter(two):
    client = two.client(two.both)
    client.post("/batches/views/save/", {"url": "/batches/?connection=finance&status=failed", "name": "Finance"})
    view = SavedView.objects.get()
    assert "connection=finance" in view.url
    finance = two.add(two.finance, "failed")
    two.add(two.research, "failed")
    html = client.get(view.url).text
    assert f'id="row-{finance["id"]}"' in html and html.count('<tr id="row-') == 1


# A batch's pages


def test_the_batch_pages_name_the_connection(two):
    batch = two.add(two.research, "completed")
    client = two.client(two.both)

    for url in (f"/batches/{batch['id']}/", f"/batches/{batch['id']}/results/"):
        html = client.get(url).text
        assert 'id="connection-line"' in html, url
        line = re.search(r'<p class="connection-line".*?</p>', html, re.S).group(0)
        assert "Research" in line and "Azure OpenAI" in line


def test_the_batch_page_of_a_default_install_says_nothing_of_connections(api, viewer_client, fresh_cache):
    batch = api.add("completed")
    assert "connection-line" not in viewer_client.get(f"/batches/{batch['id']}/").text


@pytest.fixture
def twin(two):
    """One id in both connections (possible with compatible providers)."""
    research = two.add(two.research, "completed")
    two.add(two.finance, "completed", id=research["id"])
    return research["id"]


def test_an_id_in_two_connections_leads_to_a_page_linking_both(two, twin):
    response = two.client(two.both).get(f"/batches/{twin}/")

    assert response.status_code == 300
    assert f'href="/batches/{twin}/?connection=research"' in response.text
    assert f'href="/batches/{twin}/?connection=finance"' in response.text
    assert "Azure OpenAI" in response.text and "OpenAI" in response.text


@pytest.mark.parametrize("slug", ["research", "finance"])
def test_the_connection_in_the_address_picks_one_and_the_links_keep_it(two, twin, slug):
    client = two.client(two.both)

    detail = client.get(f"/batches/{twin}/?connection={slug}")
    results = client.get(f"/batches/{twin}/results/?connection={slug}")

    assert detail.status_code == results.status_code == 200
    name = {"research": "Research", "finance": "Finance"}[slug]
    assert f"<strong>{name}</strong>" in detail.text and f"<strong>{name}</strong>" in results.text
    assert f'href="/batches/{twin}/results/?connection={slug}"' in detail.text  # detail → results
    assert f'href="/batches/{twin}/?connection={slug}"' in results.text  # results → detail


def test_a_running_batch_page_polls_its_own_connection(two):
    running = two.add(two.research, "in_progress")
    two.add(two.finance, "in_progress", id=running["id"])

    detail = two.client(two.both).get(f"/batches/{running['id']}/?connection=finance")

    assert detail.status_code == 200
    assert f'hx-get="/batches/{running["id"]}/?connection=finance"' in detail.text
    assert f'href="/batches/{running["id"]}/?connection=finance"' in detail.text  # Refresh


def test_a_viewer_of_one_of_the_two_gets_that_one_directly(two, twin):
    response = two.client(two.researcher).get(f"/batches/{twin}/")
    assert response.status_code == 200
    assert 'id="connection-line"' in response.text and "<strong>Research</strong>" in response.text


def test_kept_results_keep_the_connection_in_filters_exports_and_file_names(two, tmp_path):
    kept = kept_batch({"a": 200, "b": 500}, tmp_path)
    Batch.objects.filter(pk=kept.pk).update(connection=two.research)
    two.add(two.finance, "completed", id=kept.batch_id)  # the same id elsewhere: the address must pick
    client = two.client(two.both)

    results = client.get(f"/batches/{kept.batch_id}/results/?connection=research")
    export = client.get(f"/batches/{kept.batch_id}/results/export.csv?outcome=failed&connection=research")

    assert results.status_code == 200
    assert '<input type="hidden" name="connection" value="research">' in results.text
    assert (
        f"/batches/{kept.batch_id}/results/export.csv?" in results.text and "&amp;connection=research" in results.text
    )
    root = two.client(two.root)
    assert (
        f'href="/batches/{kept.batch_id}/retry/?connection=research"'
        in root.get(results.request["PATH_INFO"] + "?connection=research").text
    )
    retry = root.get(f"/batches/{kept.batch_id}/retry/?connection=research").text
    assert (
        "&amp;connection=research" in retry  # the choices keep it, and so does the form they lead to
        and "<strong>Research</strong>" in retry
    )
    assert export.status_code == 200
    assert f"research-{kept.batch_id}-results.csv" in export["Content-Disposition"]
    request_page = client.get(f"/batches/{kept.batch_id}/results/rows/1/?connection=research")
    assert request_page.status_code == 200 and "<strong>Research</strong>" in request_page.text
    assert f'href="/batches/{kept.batch_id}/?connection=research"' in request_page.text
    final = client.get(f"/batches/{kept.batch_id}/final/?connection=research")
    assert final.status_code == 200 and "<strong>Research</strong>" in final.text
    assert client.get(f"/batches/{kept.batch_id}/results/export.csv").status_code == 300


# The audit log


def test_a_download_is_audited_under_the_batch_connection(two, tmp_path):
    kept = kept_batch({"a": 200}, tmp_path)
    Batch.objects.filter(pk=kept.pk).update(connection=two.finance)
    two.add(two.research, "completed", id=kept.batch_id)

    response = two.client(two.both).get(f"/batches/{kept.batch_id}/results/export.jsonl?connection=finance")

    assert response.status_code == 200
    b"".join(response.streaming_content)
    event = AuditEvent.objects.get(action=Action.DOWNLOAD)
    assert event.batch_id == kept.batch_id and event.connection == two.finance


def test_the_batch_activity_lists_only_its_own_connection_events(two, twin):
    AuditEvent.objects.create(
        username="ann", action=Action.CANCEL, outcome=Outcome.OK, batch_id=twin, connection=two.research
    )
    AuditEvent.objects.create(
        username="bob", action=Action.CANCEL, outcome=Outcome.OK, batch_id=twin, connection=two.finance
    )
    client = two.client(two.both)

    research = client.get(f"/batches/{twin}/?connection=research").text
    finance = client.get(f"/batches/{twin}/?connection=finance").text

    assert "Cancelled by ann" in research and "Cancelled by bob" not in research
    assert "Cancelled by bob" in finance and "Cancelled by ann" not in finance


def test_the_audit_admin_shows_staff_only_their_connections_events(two, django_user_model):
    from django.contrib.auth.models import Permission

    AuditEvent.objects.create(
        username="ann", action=Action.CANCEL, outcome=Outcome.OK, batch_id="batch_r1", connection=two.research
    )
    AuditEvent.objects.create(
        username="bob", action=Action.CANCEL, outcome=Outcome.OK, batch_id="batch_f1", connection=two.finance
    )
    AuditEvent.objects.create(username="carl", action=Action.LOGIN, outcome=Outcome.OK)
    staff = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_auditevent"))
    staff.groups.add(two.research_team)

    page = two.client(staff).get("/admin/audit/auditevent/")
    everything = two.client(two.root).get("/admin/audit/auditevent/")
    filtered = two.client(two.root).get(f"/admin/audit/auditevent/?connection={two.finance.pk}")

    assert page.status_code == 200
    assert "batch_r1" in page.text and "carl" in page.text and "batch_f1" not in page.text
    assert "Finance" not in page.text  # not even as a filter choice
    assert all(name in everything.text for name in ("batch_r1", "batch_f1", "carl", "Research", "Finance"))
    assert "batch_f1" in filtered.text and "batch_r1" not in filtered.text


# /metrics

METRICS_TOKEN = "metrics-token-for-connection-tests"


def _scrape(settings) -> tuple[dict, int]:
    from prometheus_client.parser import text_string_to_metric_families

    settings.BATCHBOARD_METRICS_TOKEN = METRICS_TOKEN
    with CaptureQueriesContext(db_connection) as captured:
        response = Client().get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200
    figures = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    return figures, len(captured)


def test_metrics_carry_a_connection_label(two, settings):
    from batches.models import UpstreamMinute

    two.add(two.research, "in_progress")
    two.add(two.research, "in_progress")
    two.add(two.finance, "failed")
    UpstreamMinute.objects.create(connection=two.research, minute=1, calls=7, errors=2, rate_limited=1)
    UpstreamMinute.objects.create(connection=two.finance, minute=1, calls=3)
    SyncState.objects.filter(name=two.finance.list_state).update(consecutive_failures=4)

    figures, _ = _scrape(settings)

    def at(name, slug, **labels):
        return figures[(name, tuple(sorted({"connection": slug, **labels}.items())))]

    assert at("batchboard_batches", "research", status="in_progress") == 2
    assert at("batchboard_batches", "finance", status="in_progress") == 0
    assert at("batchboard_batches", "finance", status="failed") == 1
    assert at("batchboard_requests_in_flight", "research") == 2 * 3  # the example: 2 of 5 done
    assert at("batchboard_upstream_calls_total", "research") == 7
    assert at("batchboard_upstream_errors_total", "research") == 2
    assert at("batchboard_upstream_rate_limited_total", "research") == 1
    assert at("batchboard_upstream_calls_total", "finance") == 3
    assert at("batchboard_sync_consecutive_failures", "finance") == 4
    assert at("batchboard_sync_alive", "research") == 1
    assert figures[("batchboard_tasks_waiting", ())] == 0  # the task queue is everyone's: no label


def test_metrics_cost_the_same_queries_for_one_or_many_connections(two, settings):
    _, few = _scrape(settings)
    for n in range(5):
        more = Connection.objects.create(name=f"More {n}", slug=f"more-{n}", source=ConnectionSource.ADMIN)
        two.add(more, "in_progress")
    figures, many = _scrape(settings)
    assert few == many
    assert figures[("batchboard_batches", (("connection", "more-4"), ("status", "in_progress")))] == 1


def test_a_paused_connection_has_no_sync_figures_to_alert_on(two, settings):
    Connection.objects.filter(pk=two.finance.pk).update(paused=True)
    figures, _ = _scrape(settings)
    assert ("batchboard_sync_alive", (("connection", "research"),)) in figures
    assert ("batchboard_sync_alive", (("connection", "finance"),)) not in figures


# The create page


def _create_fields(connection_pk=None, **fields) -> dict:
    import json
    import uuid

    from django.core.files.uploadedfile import SimpleUploadedFile

    line = {
        "custom_id": "request-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say 1."}]},
    }
    data = {
        "token": str(uuid.uuid4()),
        "endpoint": "",
        "completion_window": "24h",
        "output_expiry_unit": "days",
        "input_file_id": "",
        "input_file": SimpleUploadedFile("requests.jsonl", json.dumps(line).encode() + b"\n"),
        **fields,
    }
    if connection_pk is not None:
        data["connection"] = str(connection_pk)
    return data


@pytest.fixture
def creators(two, fake_api):
    """Both connections answer at the fake API (which logs anything sent); Research grants create to its team, and
    `maker` may create on Research and Finance."""
    Connection.objects.filter(pk__in=[two.research.pk, two.finance.pk]).update(base_url=fake_api.url)
    two.research.create_teams.add(two.research_team)
    maker_team = Group.objects.create(name="makers")
    two.research.create_teams.add(maker_team)
    two.finance.create_teams.add(maker_team)
    two.maker = two.both
    two.maker.groups.add(maker_team)
    return two


def test_the_create_page_offers_only_the_connections_the_user_may_create_on(creators):
    html = creators.client(creators.researcher).get("/batches/new/").text
    assert f'<input type="hidden" name="connection" value="{creators.research.pk}"' in html
    assert "connection-choice" not in html  # one connection: nothing to choose

    html = creators.client(creators.maker).get("/batches/new/").text
    choice = re.search(r'<fieldset class="card connection-choice.*?</fieldset>', html, re.S).group(0)
    assert "Research (Azure OpenAI)" in choice and "Finance (OpenAI)" in choice
    assert 'type="radio"' in choice and "default" not in choice
    assert html.index("connection-choice") < html.index("<legend>Input</legend>")


@pytest.mark.parametrize("hidden_choice", [True, False], ids=["hidden-field", "radio"])
def test_a_tampered_connection_is_refused_and_nothing_is_sent(creators, fake_api, hidden_choice):
    # The researcher may create on Research alone (a hidden field), the maker on Research and Finance (a choice):
    # each names a connection not offered to them.
    user, tampered = (
        (creators.researcher, creators.finance) if hidden_choice else (creators.maker, Connection.objects.default())
    )
    response = creators.client(user).post("/batches/new/", _create_fields(tampered.pk))

    assert response.status_code == 200
    assert "You may not create batches on that connection" in response.text
    assert "Nothing was created" in response.text
    assert fake_api.received == []
    assert not Batch.objects.exists()
    refused = AuditEvent.objects.get(action=Action.CREATE)
    assert refused.outcome == Outcome.REFUSED


def test_it_creates_on_the_chosen_connection_and_says_where(two, sandbox_url, monkeypatch):
    Connection.objects.filter(pk=two.finance.pk).update(base_url=sandbox_url)
    two.finance.create_teams.add(two.finance_team)
    two.research.create_teams.add(two.research_team)

    response = two.client(two.both).post("/batches/new/", _create_fields(two.finance.pk))

    assert response.status_code == 303
    created = Batch.objects.get()
    assert created.connection == two.finance
    assert response["Location"] == f"/batches/{created.batch_id}/?connection=finance"
    event = AuditEvent.objects.get(action=Action.CREATE)
    assert event.outcome == Outcome.OK and event.connection == two.finance


def test_the_audit_log_command_names_the_connection(two):
    import json
    from io import StringIO

    from django.core.management import call_command

    AuditEvent.objects.create(
        username="ann", action=Action.CANCEL, outcome=Outcome.OK, batch_id="batch_r1", connection=two.research
    )
    text, as_json = StringIO(), StringIO()
    call_command("audit_log", stdout=text)
    call_command("audit_log", "--json", stdout=as_json)

    assert text.getvalue().splitlines()[-1].split(" ", 1)[1] == "ann - cancel ok batch_r1 in research"
    assert json.loads(as_json.getvalue().splitlines()[-1])["connection"] == "research"


def test_the_navigation_offers_new_batch_to_whoever_may_create_on_a_connection(two):
    nav_link = '<a href="/batches/new/"'
    assert nav_link not in two.client(two.researcher).get("/batches/spending/").text

    two.research.create_teams.add(two.research_team)  # a team grant, no Django permission

    assert nav_link in two.client(two.researcher).get("/batches/spending/").text
