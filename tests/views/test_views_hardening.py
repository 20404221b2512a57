"""Web-layer edge cases: error pages, HEAD requests, literal search, live fragments that keep focus, dark-mode text."""

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from batches.models import Batch

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
BASE_CSS = Path(__file__).resolve().parents[2] / "static" / "css" / "base.css"
FOCUSABLE = {"a", "input", "select", "button", "textarea", "summary", "details"}


class _Controls(HTMLParser):
    """The interactive elements of a piece of HTML, as (tag, attributes)."""

    def __init__(self):
        super().__init__()
        self.found = []

    def handle_starttag(self, tag, attrs):
        if tag in FOCUSABLE and not (tag == "input" and dict(attrs).get("type") == "hidden"):
            self.found.append((tag, dict(attrs)))


def _controls(html: str) -> list[tuple[str, dict]]:
    parser = _Controls()
    parser.feed(html)
    return parser.found


# --- Error pages and methods ------------------------------------------------


@pytest.mark.parametrize("url", ["/nope/", "/batches/.not-a-batch-id/", "/batches/batch_abc/files/"])
def test_it_shows_a_plain_404_for_an_address_that_matches_nothing(viewer_client, url):
    response = viewer_client.get(url)
    assert response.status_code == 404
    html = response.content.decode()
    assert "There is nothing at this address." in html
    assert "Resolver404" not in html


def test_an_id_of_no_shape_the_viewers_connections_take_is_a_404_that_never_reaches_the_api(api, viewer_client):
    """URLs take any path-safe id (a compatible provider's); an OpenAI connection asks the API only for its shape."""
    response = viewer_client.get("/batches/not-a-batch-id/")
    assert response.status_code == 404
    assert "There is no batch not-a-batch-id." in response.content.decode()
    assert api.server.received == []


def test_it_still_says_why_on_a_404_with_a_message(api, viewer_client):
    response = viewer_client.get("/batches/batch_abc/files/zip/")
    assert response.status_code == 404
    assert "Batch files are input, output or error." in response.content.decode()


def test_it_refuses_a_form_with_too_many_fields_with_a_page_in_words(api, operator_client):
    batch = api.add("in_progress")
    response = operator_client.post("/batches/cancel/", {"batch_id": [batch["id"]] * 1001, "confirm": "yes"})
    assert response.status_code == 400
    assert "The request could not be understood" in response.content.decode()
    assert api.cancels == []


def test_it_answers_head_on_the_confirm_pages_without_cancelling(api, operator_client):
    batch = api.add("in_progress")

    single = operator_client.head(f"/batches/{batch['id']}/cancel/?confirm=yes")
    bulk = operator_client.head(f"/batches/cancel/?batch_id={batch['id']}&confirm=yes")

    assert single.status_code == bulk.status_code == 200
    assert api.cancels == []
    assert Batch.objects.get(batch_id=batch["id"]).cancel_requested_at is None


def test_it_answers_head_on_the_create_page(operator_client):
    assert operator_client.head("/batches/new/").status_code == 200


def test_it_still_refuses_head_to_users_who_may_not_cancel(api, viewer_client):
    batch = api.add("in_progress")
    assert viewer_client.head(f"/batches/{batch['id']}/cancel/").status_code == 403
    assert viewer_client.head("/batches/cancel/").status_code == 403


# --- The list ---------------------------------------------------------------


def test_it_searches_for_percent_signs_and_underscores_literally(api, viewer_client):
    percent = api.add("completed", metadata={"note": "50% off"})
    digits = api.add("completed", metadata={"note": "500 off"})
    underscore = api.add("completed", metadata={"tag": "x_y"})
    letters = api.add("completed", metadata={"tag": "xzy"})

    by_percent = viewer_client.get("/batches/", {"q": "50%"}).content.decode()
    by_underscore = viewer_client.get("/batches/", {"q": "x_y"}).content.decode()

    assert percent["id"] in by_percent and digits["id"] not in by_percent
    assert underscore["id"] in by_underscore and letters["id"] not in by_underscore


def test_it_does_not_promise_a_model_for_a_finished_batch_that_never_had_one(api, viewer_client):
    failed = api.add("failed", model=None)
    validating = api.add("validating", model=None)

    html = viewer_client.get("/batches/").content.decode()

    failed_row = re.search(rf'<tr id="row-{failed["id"]}".*?</tr>', html, re.S).group(0)
    validating_row = re.search(rf'<tr id="row-{validating["id"]}".*?</tr>', html, re.S).group(0)
    assert "model not known yet" not in failed_row and '<span class="model">—</span>' in failed_row
    assert "model not known yet" in validating_row


@pytest.mark.parametrize("client_name", ["viewer_client", "operator_client"])
def test_it_gives_every_control_of_the_polled_list_an_id_so_focus_survives_a_refresh(api, request, client_name):
    client = request.getfixturevalue(client_name)
    for _ in range(60):  # two pages, so the pagination links are there too
        api.add("in_progress")

    fragment = client.get("/batches/", {"page": "1"}, **HTMX).content.decode()

    controls = _controls(fragment)
    assert any(attrs.get("rel") == "next" for _tag, attrs in controls)
    assert any("status-chip" in attrs.get("class", "") for _tag, attrs in controls)
    if client_name == "operator_client":
        assert any(attrs.get("hx-post") for _tag, attrs in controls)
    missing = [(tag, attrs) for tag, attrs in controls if not attrs.get("id")]
    assert missing == []
    ids = [attrs["id"] for _tag, attrs in controls]
    assert len(ids) == len(set(ids))


def test_it_gives_every_control_of_the_polled_detail_panel_an_id(api, operator_client):
    batch = api.add("in_progress")

    fragment = operator_client.get(f"/batches/{batch['id']}/", **HTMX).content.decode()

    controls = _controls(fragment)
    assert any(tag == "a" and "download" in attrs for tag, attrs in controls)
    assert any(attrs.get("hx-post") for _tag, attrs in controls)
    assert [(tag, attrs) for tag, attrs in controls if not attrs.get("id")] == []


def test_it_styles_the_detail_page_without_the_list_stylesheet(api, viewer_client):
    batch = api.add("in_progress")
    html = viewer_client.get(f"/batches/{batch['id']}/").content.decode()
    assert "css/list.css" not in html
    # What the detail page needs from the shared stylesheet: hidden stays hidden, and the live controls' look.
    css = BASE_CSS.read_text()
    assert re.search(r"^\[hidden\] \{ display: none !important; \}$", css, re.M)
    assert ".live-controls {" in css and ".live-changed" in css


# --- Colours ----------------------------------------------------------------


def _tokens(css: str) -> tuple[dict, dict]:
    light_part, dark_part = css.split("@media (prefers-color-scheme: dark)", 1)
    light = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6})", light_part))
    dark = {**light, **dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6})", dark_part.split("}", 1)[0]))}
    return light, dark


def _luminance(colour: str) -> float:
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(foreground: str, background: str) -> float:
    lighter, darker = sorted((_luminance(foreground), _luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


# Text on the backgrounds it is drawn on: badges, notices, messages, buttons, links, muted text, highlighted rows.
TEXT_PAIRS = [
    ("text", "bg"),
    ("text", "surface"),
    ("text", "surface-2"),
    ("text", "highlight"),
    ("muted", "bg"),
    ("muted", "surface"),
    ("muted", "surface-2"),
    ("muted", "highlight"),
    ("accent", "bg"),
    ("accent", "surface"),
    ("accent", "surface-2"),
    ("accent", "highlight"),
    ("accent-text", "accent"),
    ("ok", "ok-bg"),
    ("ok", "surface"),
    ("warn", "warn-bg"),
    ("warn", "surface"),
    ("bad", "bad-bg"),
    ("bad", "surface"),
    ("bad", "highlight"),
    ("info", "info-bg"),
    ("neutral", "neutral-bg"),
]
# Non-text contrast (WCAG 1.4.11): the focus ring and the edges of text fields against the page.
UI_PAIRS = [("focus", "bg"), ("focus", "surface"), ("control-border", "bg"), ("control-border", "surface")]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_it_keeps_text_and_controls_readable_in_both_colour_schemes(scheme):
    light, dark = _tokens(BASE_CSS.read_text())
    tokens = light if scheme == "light" else dark
    weak_text = [(f, b, round(_contrast(tokens[f], tokens[b]), 2)) for f, b in TEXT_PAIRS]
    weak_ui = [(f, b, round(_contrast(tokens[f], tokens[b]), 2)) for f, b in UI_PAIRS]
    assert [pair for pair in weak_text if pair[2] < 4.5] == []
    assert [pair for pair in weak_ui if pair[2] < 3] == []
