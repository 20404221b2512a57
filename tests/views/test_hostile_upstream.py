"""Issue 18, "how to judge it": a seeded fuzz of a hostile upstream (tests.hostile_api). The sync loop keeps recording
every normal batch beside the hostile ones, what it skips is counted in /metrics, kept results of hostile files are
indexed, and no page answers 500 for any of it."""

import contextlib
import random
from urllib.parse import quote, urlencode

import pytest
from prometheus_client.parser import text_string_to_metric_families

from batches import reactions, services, sync
from batches.models import Batch, SyncState, record_batch
from results import archive
from results.links import request_links
from results.models import ArchiveState, ResultArchive
from tests.batch_api import payload
from tests.hostile_api import HostileApi, hostile_result_files, serve_file, serve_redirected_file

pytestmark = pytest.mark.django_db

SEED = 18
BATCHES = 300
TOKEN = "metrics-token-for-the-fuzz"


class Pages:
    """GETs through the test client, noting what answered 500 (an exception, as the test client raises it)."""

    def __init__(self, client):
        self.client = client
        self.broken: list[tuple[str, str]] = []
        self.fetched = 0

    def get(self, url: str, *expected: int) -> None:
        self.fetched += 1
        try:
            response = self.client.get(url)
        except Exception as exc:  # every failure of a page is a finding
            self.broken.append((url, f"{type(exc).__name__}: {str(exc)[:300]}"))
            return
        if response.streaming:
            for _chunk in response.streaming_content:
                pass
        if response.status_code >= 500 or (expected and response.status_code not in expected):
            self.broken.append((url, f"HTTP {response.status_code}"))


def _metrics(client, settings) -> dict:
    settings.BATCHBOARD_METRICS_TOKEN = TOKEN
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if set(sample.labels) <= {"connection"}  # the one connection of these tests
    }


def _kept_hostile_results(fake_api, rng: random.Random, count: int) -> list[Batch]:
    """`count` completed batches whose files are hostile, fetched and indexed; one more whose file redirects."""
    kept = []
    for number in range(count + 1):
        ids = {kind: f"file-fuzz{kind}{number}" for kind in ("input", "output", "error")}
        if number < count:
            for kind, content in zip(ids.values(), hostile_result_files(rng, rng.randrange(20, 120)), strict=True):
                serve_file(fake_api, kind, content)
        else:
            serve_redirected_file(fake_api, ids["output"], "/v1/readyz")
            serve_file(fake_api, ids["input"], b"")
            ids["error"] = None
        data = payload(
            "completed", input_file_id=ids["input"], output_file_id=ids["output"], error_file_id=ids["error"]
        )
        data["metadata"] = {"items": "x", "keys": "y", "values": "z"} if number % 2 else {"n": "\x00"}
        batch = record_batch(services.ApiBatch.from_api(data))
        state = ResultArchive.objects.update_or_create(batch=batch, defaults={"state": ArchiveState.ARCHIVING})[0]
        with contextlib.suppress(reactions.Failed):  # what the keep_results reaction records as given up on
            archive.fetch_archive(state, services.get_client())
        state.refresh_from_db()
        assert state.state != ArchiveState.ARCHIVING, state.problem
        kept.append(batch)
    return kept


def test_a_hostile_upstream_never_stops_the_sync_and_never_breaks_a_page(fake_api, viewer_client, client, settings):
    rng = random.Random(SEED)
    hostile = HostileApi(fake_api, seed=SEED)
    hostile.add(BATCHES * 2 // 3)
    skipped = 0
    for round_number in range(3):
        outcome = sync.run_pass(force=True)
        assert outcome.ran and not outcome.error, outcome.describe()
        skipped += outcome.result.skipped
        if round_number == 0:
            hostile.add(BATCHES // 3)
        hostile.move_on()

    # Every normal batch is recorded, in the state the API last gave it.
    recorded = dict(Batch.objects.values_list("batch_id", "status"))
    for batch_id in hostile.normal_ids:
        assert recorded.get(batch_id) == hostile.by_id(batch_id)["status"], batch_id
    # Every batch with a valid id is recorded or counted as skipped, and the metric says how many were skipped.
    listed = len(hostile.normal_ids) + len(hostile.hostile_ids)
    assert len(recorded) + skipped == listed, set(recorded) - set(hostile.normal_ids) - set(hostile.hostile_ids)
    state = SyncState.objects.get(name=sync.LIST_STATE)
    assert state.skipped_total == skipped and state.consecutive_failures == 0
    figures = _metrics(client, settings)
    assert figures["batchboard_sync_skipped_total"] == skipped
    assert figures["batchboard_sync_consecutive_failures"] == 0

    kept = _kept_hostile_results(fake_api, rng, 4)

    pages = Pages(viewer_client)
    for query in ("", "?status=unknown", "?q=items", "?q=%00", "?sort=status"):
        pages.get(f"/batches/{query}", 200)
    for batch_id in rng.sample(hostile.hostile_ids, 20) + rng.sample(hostile.normal_ids, 3):
        pages.get(f"/batches/{batch_id}/", 200)
    for batch in kept:
        base = f"/batches/{batch.batch_id}/results/"
        for query in ("", "?code=items", "?q=nul"):
            pages.get(base + query, 200)
        state = ResultArchive.objects.get(batch=batch)
        if state.state != ArchiveState.READY:
            continue
        link = request_links(batch.batch_id)
        # The rows most likely to be odd: unreadable answers, duplicates, lines not in the input, and a few others.
        odd = state.lines.exclude(outcome="succeeded", duplicate=False, line_number__isnull=False)
        for line in [*odd.order_by("position")[:8], *state.lines.all()[:2]]:
            pages.get(link(line.position), 200)
            pages.get(f"{base}rows/{line.position}/result.jsonl", 200, 404)
            pages.get(f"{base}rows/?{urlencode({'custom_id': line.custom_id})}", 302)
        for export in ("export.csv", "export.jsonl", "files/output.jsonl", "files/error.jsonl"):
            pages.get(base + export, 200, 404)
        pages.get(f"{base}{quote('nul' + chr(0) + 'id')}/", 302, 404)

    assert pages.fetched > 100
    assert pages.broken == [], pages.broken[:5]


def test_an_api_error_message_with_a_lone_surrogate_nul_or_50_kb_is_shown_cut_and_clean(api, operator_client):
    from tests.fake_api import Reply

    batch = api.add("in_progress")
    message = "Refused \ud800 because\x00 " + "x" * 50_000  # within the 64 KB of an error body that is read
    body = '{"error": {"message": "' + message.replace("\x00", "\\u0000").replace("\ud800", "\\ud800") + '"}}'
    api.cancel_reply = Reply(400, body.encode(), headers={"x-should-retry": "false"})

    response = operator_client.post(f"/batches/{batch['id']}/cancel/", HTTP_HX_REQUEST="true")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Refused \ufffd because xxx" in html and "\x00" not in html
    assert len(html) < 20_000
