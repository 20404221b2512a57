"""The ids each kind of connection accepts (issue 19, item 7): a compatible provider's ids have no OpenAI shape, yet
whatever reaches a URL path stays one bounded, plain segment, and what is stored fits its column and its file name.
"""

import base64
import uuid

import pytest
from django.urls import NoReverseMatch, Resolver404, resolve, reverse

from batches import lookups, services
from batches.converters import detail_url
from batches.forms import CreateBatchForm
from batches.lineage_keys import claim_of
from batches.models import Connection, ConnectionKind, record_batch
from results.archive import storage_folder
from tests.batch_api import payload

# As LiteLLM's managed files mode makes them: an upstream description, base64url with its padding.
GATEWAY_BATCH = base64.urlsafe_b64encode(b"litellm_proxy;model_id:" + b"ab12" * 30 + b";llm_batch_id:batch_1").decode()
GATEWAY_FILE = base64.urlsafe_b64encode(b"litellm_proxy:application/octet-stream;unified_id," + b"x" * 120).decode()
UNSAFE = ["..", ".", ".hidden", "a/b", "a%2Fb", "a b", "a?b", "a#b", "a\\b", "a\x00b", "é", "x" * 501, ""]


def test_gateway_ids_are_long_padded_base64url():
    assert 190 <= len(GATEWAY_BATCH) <= 260 and GATEWAY_BATCH.endswith("=")
    assert 190 <= len(GATEWAY_FILE) <= 260


def test_it_routes_and_links_any_path_safe_id_and_nothing_else():
    url = reverse("batches:detail", args=[GATEWAY_BATCH])
    assert url == f"/batches/{GATEWAY_BATCH}/" and detail_url(GATEWAY_BATCH) == url
    assert resolve(url).kwargs == {"batch_id": GATEWAY_BATCH}
    assert resolve(f"/batches/{GATEWAY_BATCH}/results/").kwargs["batch_id"] == GATEWAY_BATCH
    for unsafe in UNSAFE:
        assert detail_url(unsafe) == ""
        with pytest.raises(NoReverseMatch):
            reverse("batches:detail", args=[unsafe])
    for path in ("/batches/../", "/batches/.hidden/", "/batches/a%2Fb/", f"/batches/{'x' * 501}/"):
        with pytest.raises(Resolver404):
            resolve(path)


def test_the_client_sends_a_compatible_id_as_one_quoted_segment_and_refuses_unsafe_ones():
    compatible = services.BatchClient(api_key="k", base_url="http://127.0.0.1:9/v1", ids=services.ANY_IDS)
    openai = services.BatchClient(api_key="k", base_url="http://127.0.0.1:9/v1")
    assert services._segment("a=b+c:d", services.ANY_ID_PATTERN, "batch id") == "a%3Db%2Bc%3Ad"
    for unsafe in UNSAFE:
        with pytest.raises(services.InvalidId):
            compatible.retrieve_batch(unsafe)
    with pytest.raises(services.InvalidId):
        openai.retrieve_batch(GATEWAY_BATCH)  # an OpenAI connection never sends another shape


@pytest.mark.django_db
def test_a_compatible_connection_records_its_long_ids_an_openai_one_leaves_them_out():
    compatible = Connection.objects.create(name="Gateway", slug="gateway", kind=ConnectionKind.COMPATIBLE)
    data = payload("completed", id=GATEWAY_BATCH, input_file_id=GATEWAY_FILE, output_file_id=GATEWAY_FILE + "o")
    row = record_batch(services.ApiBatch.from_api(data, compatible.id_shapes), connection=compatible)
    row.refresh_from_db()
    assert (row.batch_id, row.input_file_id, row.output_file_id) == (GATEWAY_BATCH, GATEWAY_FILE, GATEWAY_FILE + "o")
    with pytest.raises(ValueError, match="not a batch id"):
        services.ApiBatch.from_api(data, Connection.objects.default().id_shapes)


def test_a_claim_names_a_batch_of_the_childs_connection_shape_only():
    openai, compatible = services.OPENAI_IDS.batch, services.ANY_IDS.batch
    claim = {"batchboard_retry_of": GATEWAY_BATCH, "batchboard_job": GATEWAY_BATCH, "batchboard_attempt": "2"}
    kept = claim_of("child", claim, compatible)
    assert (kept.retry_of, kept.job, kept.attempt) == (GATEWAY_BATCH, GATEWAY_BATCH, 2)
    assert claim_of("batch_child", claim, openai).retry_of == ""  # no OpenAI batch has that id
    for hostile in UNSAFE:
        assert claim_of("child", {"batchboard_retry_of": hostile}, compatible).retry_of == ""
        job = claim_of("child", {"batchboard_retry_of": "parent", "batchboard_job": hostile}, compatible).job
        assert job == "parent"
    assert claim_of("same", {"batchboard_retry_of": "same"}, compatible).retry_of == ""


@pytest.mark.django_db
def test_the_create_form_takes_the_file_ids_of_the_chosen_connections_shape():
    compatible = Connection.objects.create(name="Gateway", slug="gateway", kind=ConnectionKind.COMPATIBLE)
    openai = Connection.objects.create(name="Project", slug="project", kind=ConnectionKind.OPENAI)
    fields = {
        "token": str(uuid.uuid4()),
        "endpoint": services.ENDPOINTS[0],
        "completion_window": "24h",
        "output_expiry_unit": "days",
    }
    for connection, file_id, valid in [
        (compatible, GATEWAY_FILE, True),
        (openai, GATEWAY_FILE, False),
        (openai, "file-abc123", True),
        (compatible, "../files", False),
    ]:
        form = CreateBatchForm(
            {**fields, "connection": connection.pk, "input_file_id": file_id}, connections=[compatible, openai]
        )
        assert form.is_valid() is valid, (connection.slug, file_id, form.errors)
        if not valid:
            assert "input_file_id" in form.errors


def test_long_ids_get_bounded_file_names_and_cache_keys():
    assert storage_folder("batch_abc") == "batch_abc"
    folder = storage_folder(GATEWAY_BATCH)
    assert len(folder) <= 100 and folder.startswith(GATEWAY_BATCH[:64])
    assert storage_folder(GATEWAY_BATCH + "x") != folder
    assert len(lookups._not_found_key("batch", 7, "x" * 500)) < 250
    assert lookups._failure_key(7, GATEWAY_BATCH) != lookups._failure_key(8, GATEWAY_BATCH)
