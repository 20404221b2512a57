"""Ids are validated where they enter: from the API (a batch or file id that is not one is refused or left out,
never sent back in a path) and from URLs; a cached row whose id cannot be linked renders without a link and is
logged instead of taking the list down."""

import dataclasses
import logging

import pytest

from batches import services
from batches.models import record_batch
from tests.conftest import completed, observation
from tests.fake_api import Reply, example

pytestmark = pytest.mark.django_db


def test_it_refuses_a_batch_whose_id_is_not_a_batch_id():
    for bad in ("..", "batch_a.b", "batch_a/b", "file-x", "batch_"):
        with pytest.raises(ValueError):
            services.ApiBatch.from_api({**example("batch.completed.json"), "id": bad})


def test_it_drops_a_file_id_that_is_not_one_and_logs_it(caplog):
    with caplog.at_level(logging.WARNING, logger="batches.services"):
        batch = services.ApiBatch.from_api({**example("batch.completed.json"), "output_file_id": ".."})
    assert batch.output_file_id is None
    assert "'..'" in caplog.text


def test_a_list_page_leaves_out_an_odd_batch_and_keeps_the_rest(caplog):
    good = example("batch.completed.json")
    page = services.BatchPage.from_api({"data": [{**good, "id": "batch_a.b"}, good], "has_more": False})
    assert [b.id for b in page.data] == [good["id"]]
    assert "batch_a.b" in caplog.text


def test_a_file_id_of_dot_dot_never_reaches_the_api(viewer_client, fake_api):
    # A row cached before ids were checked: downloading its ".." output file once called GET /v1/ and /v1/content.
    record_batch(dataclasses.replace(completed("batch_dots"), output_file_id=".."))
    fake_api.route("GET", "/files/..", lambda received: Reply(200, {}))

    response = viewer_client.get("/batches/batch_dots/files/output/")

    assert response.status_code == 404
    assert [r.path for r in fake_api.received if "files" in r.path or r.path in ("/", "/content")] == []


def test_an_unlinkable_cached_row_renders_without_a_link_and_is_logged(operator_client, fake_api, caplog):
    record_batch(dataclasses.replace(observation("batch_ok"), id="batch_a/b"))
    record_batch(observation("batch_ok"))

    with caplog.at_level(logging.WARNING):
        page = operator_client.get("/batches/")
        fragment = operator_client.get("/batches/", headers={"HX-Request": "true"})

    assert page.status_code == 200 and fragment.status_code in (200, 286)
    html = page.content.decode()
    assert '<span class="mono">batch_a/b</span>' in html
    assert 'href="/batches/batch_a/b/' not in html
    assert 'href="/batches/batch_ok/"' in html
    assert 'value="batch_a/b"' not in html  # no checkbox or cancel button for it either
    assert "batch_a/b" in caplog.text and "cannot be linked" in caplog.text


def test_the_admin_lists_an_unlinkable_row(admin_client):
    record_batch(dataclasses.replace(observation("batch_ok"), id="batch_a.b"))
    assert admin_client.get("/admin/batches/batch/").status_code == 200
    row = admin_client.get("/admin/batches/batch/?q=batch_a.b").content.decode()
    assert "batch_a.b" in row


@pytest.mark.parametrize("path", ["/batches/batch_a.b/", "/batches/../", "/batches/batch_x/files/..%2F/"])
def test_urls_with_an_odd_id_are_not_found_without_an_upstream_call(viewer_client, fake_api, path):
    assert viewer_client.get(path).status_code == 404
    assert not [r for r in fake_api.received if r.path.startswith(("/batches/", "/files"))]
