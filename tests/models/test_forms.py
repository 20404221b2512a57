"""The create form: streaming JSONL validation (each rule, with line numbers) and the form's own options."""

import io
import json
import tracemalloc
import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from batches import services
from batches.forms import MAX_REPORTED_ERRORS, CreateBatchForm, validate_jsonl
from tests.reference import EXAMPLES

# The form and its validation read the upload's bytes only: a second database changes nothing.
pytestmark = pytest.mark.once

EXAMPLE_INPUT = EXAMPLES / "batch_input.chat_completions.jsonl"
CHAT = "/v1/chat/completions"


def _request(number: int, **changes) -> dict:
    request = {
        "custom_id": f"request-{number}",
        "method": "POST",
        "url": CHAT,
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Question {number}"}]},
    }
    request.update(changes)
    return request


def _jsonl(*requests) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in requests)


def _validate(content: bytes, **kwargs):
    return validate_jsonl(io.BytesIO(content), **kwargs)


def _valid_file(count: int = 3) -> bytes:
    return _jsonl(*(_request(n) for n in range(1, count + 1)))


# --- JSONL rules ------------------------------------------------------------


def test_it_accepts_a_valid_file_and_infers_the_endpoint_and_model():
    report = _validate(_valid_file(3))
    assert report.is_valid, report.messages
    assert (report.requests, report.endpoint, report.model) == (3, CHAT, "gpt-4o-mini")


def test_it_accepts_the_shared_example_input():
    report = validate_jsonl(EXAMPLE_INPUT.open("rb"))
    assert report.is_valid, report.messages
    assert report.endpoint == CHAT


def test_it_tolerates_trailing_blank_lines_and_crlf_line_endings():
    content = _valid_file(2).replace(b"\n", b"\r\n") + b"\r\n\n   \n"
    report = _validate(content)
    assert report.is_valid, report.messages
    assert report.requests == 2


def test_it_reports_blank_lines_between_requests():
    report = _validate(_jsonl(_request(1)) + b"\n" + _jsonl(_request(2)))
    assert report.messages == ["Line 2: blank line; only the end of the file may have blank lines."]


def test_it_reports_invalid_json_with_its_line_number():
    report = _validate(_jsonl(_request(1), b'{"custom_id": "request-2",', _request(3)))
    assert len(report.messages) == 1
    assert report.messages[0].startswith("Line 2: not valid JSON")


def test_it_rejects_json_that_is_not_an_object_and_nan():
    report = _validate(_jsonl(_request(1), b"[1, 2]", b'{"custom_id": "x", "n": NaN}'))
    assert report.messages[0] == "Line 2: expected a JSON object, found list."
    assert report.messages[1].startswith("Line 3: not valid JSON")


@pytest.mark.parametrize("custom_id", [None, "", 7])
def test_it_requires_a_non_empty_string_custom_id(custom_id):
    request = _request(2)
    if custom_id is None:
        del request["custom_id"]
    else:
        request["custom_id"] = custom_id
    report = _validate(_jsonl(_request(1), request))
    assert report.messages == ["Line 2: custom_id must be a non-empty string."]


def test_it_reports_a_duplicate_custom_id_with_the_first_line():
    report = _validate(_jsonl(_request(1), _request(2), _request(3), _request(2)))
    assert report.messages == ["Line 4: custom_id 'request-2' is already used on line 2."]


@pytest.mark.parametrize("method", ["GET", "post", None])
def test_it_requires_method_post(method):
    report = _validate(_jsonl(_request(1), _request(2, method=method)))
    assert len(report.messages) == 1
    assert report.messages[0].startswith('Line 2: method must be "POST"')


@pytest.mark.parametrize("body", [None, "text", [1]])
def test_it_requires_an_object_body(body):
    report = _validate(_jsonl(_request(1), _request(2, body=body)))
    assert len(report.messages) == 1
    assert report.messages[0].startswith("Line 2: body must be a JSON object")


def test_it_rejects_streaming_requests():
    request = _request(2)
    request["body"]["stream"] = True
    assert _validate(_jsonl(_request(1), request)).messages == [
        "Line 2: body.stream is true; batch requests cannot stream."
    ]


def test_it_reports_urls_that_differ_from_the_inferred_endpoint():
    report = _validate(_jsonl(_request(1), _request(2, url="/v1/embeddings"), _request(3, url=None)))
    assert report.endpoint == CHAT
    assert report.messages[0] == (
        "Line 2: url is '/v1/embeddings'; every line must use the batch's endpoint '/v1/chat/completions'."
    )
    assert report.messages[1].startswith("Line 3: url must be the endpoint path")


def test_it_checks_every_url_against_a_chosen_endpoint():
    report = _validate(_valid_file(2), endpoint="/v1/responses")
    assert report.messages == [
        "Line 1: url is '/v1/chat/completions'; every line must use the batch's endpoint '/v1/responses'.",
        "Line 2: url is '/v1/chat/completions'; every line must use the batch's endpoint '/v1/responses'.",
    ]


def test_it_rejects_a_first_url_that_is_no_batch_endpoint():
    report = _validate(_jsonl(_request(1, url="/v1/audio/speech")))
    assert report.endpoint is None
    assert report.messages[0].startswith("Line 1: url '/v1/audio/speech' is not a Batch API endpoint")


def test_it_requires_one_model_for_the_whole_file():
    other = _request(3)
    other["body"]["model"] = "gpt-4o"
    report = _validate(_jsonl(_request(1), _request(2), other))
    assert report.messages == [
        "Line 3: body.model is 'gpt-4o' but line 1 uses 'gpt-4o-mini'; a batch runs a single model."
    ]


def test_it_reports_lines_without_a_model_when_others_name_one():
    def moderation(n, **model):
        return _request(n, url="/v1/moderations", body={"input": f"text {n}", **model})

    named = {"model": "omni-moderation-latest"}
    report = _validate(_jsonl(moderation(1), moderation(2, **named), moderation(3, **named), moderation(4)))
    assert sorted(report.messages) == [
        "Line 1: body.model is missing but line 2 uses 'omni-moderation-latest'.",
        "Line 4: body.model is missing but line 2 uses 'omni-moderation-latest'.",
    ]


def test_it_requires_a_model_on_every_line_for_an_endpoint_without_a_default():
    first, later = _request(1), _request(3)
    del first["body"]["model"], later["body"]["model"]
    report = _validate(_jsonl(first, _request(2), later))
    assert report.messages == [
        "Line 1: body.model is missing; requests to /v1/chat/completions name their model.",
        "Line 3: body.model is missing; requests to /v1/chat/completions name their model.",
    ]


def test_it_accepts_a_file_where_no_line_names_a_model():
    requests = [_request(n, url="/v1/moderations", body={"input": f"text {n}"}) for n in (1, 2)]
    report = _validate(_jsonl(*requests))
    assert report.is_valid, report.messages
    assert (report.endpoint, report.model) == ("/v1/moderations", None)


def test_it_rejects_a_byte_order_mark_and_still_checks_the_first_line():
    report = _validate(b"\xef\xbb\xbf" + _valid_file(2))
    assert report.messages == [
        "Line 1: the file starts with a UTF-8 byte order mark (BOM). Save it as UTF-8 without BOM."
    ]
    assert report.requests == 2


def test_it_rejects_invalid_utf8_with_the_line_and_byte():
    bad = json.dumps(_request(2)).encode().replace(b"Question", b"Qu\xffestion")
    report = _validate(_jsonl(_request(1), bad))
    assert len(report.messages) == 1
    assert report.messages[0].startswith("Line 2: not valid UTF-8 (byte 0xff at column")


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_it_says_where_a_line_cut_short_stops(ending):
    report = _validate(b'{"custom_id": "a", "method": "POST"' + ending + json.dumps(_request(2)).encode() + ending)
    assert report.messages == ["Line 1: not valid JSON (Expecting ',' delimiter at column 36)."]


@pytest.mark.parametrize("content", [b"", b"\n", b"\n \n\r\n"])
def test_it_rejects_an_empty_file(content):
    assert _validate(content).messages == ["The file is empty: it has no requests."]


def test_it_shows_the_first_20_problems_and_counts_the_rest():
    requests = [_request(n, method="GET") for n in range(1, 31)]
    report = _validate(_jsonl(*requests))
    assert report.line_error_count == 30
    assert len(report.messages) == MAX_REPORTED_ERRORS + 1
    assert report.messages[0].startswith("Line 1: ")
    assert report.messages[19].startswith("Line 20: ")
    assert report.messages[-1] == "…and 10 more problems."


def test_it_counts_more_than_50000_requests(tmp_path):
    path = tmp_path / "big.jsonl"
    line = json.dumps(_request(0))
    with path.open("w") as handle:
        for number in range(services.MAX_REQUESTS_PER_BATCH):
            handle.write(line.replace('"request-0"', f'"request-{number}"') + "\n")
    with path.open("rb") as handle:
        assert validate_jsonl(handle).is_valid

    with path.open("a") as handle:
        handle.write(line.replace('"request-0"', '"one-too-many"') + "\n")
    with path.open("rb") as handle:
        report = validate_jsonl(handle)
    assert report.messages == [
        "The file has 50,001 requests; a batch holds at most 50,000. Split it into several files."
    ]


def test_it_rejects_a_file_over_the_size_limit_without_reading_it():
    class Unreadable(io.BytesIO):
        def readline(self, *args):
            raise AssertionError("an oversized file must not be read")

    report = validate_jsonl(Unreadable(), size=services.MAX_INPUT_FILE_BYTES + 1)
    assert report.messages == [
        "The file is 200 MB (209,715,201 bytes); the Batch API accepts at most 200 MB (209,715,200 bytes)."
    ]


def test_it_measures_the_size_while_streaming_when_it_is_not_given(monkeypatch):
    content = _valid_file(50)
    monkeypatch.setattr(services, "MAX_INPUT_FILE_BYTES", len(content) - 1)
    report = _validate(content)
    assert not report.is_valid
    assert report.messages[0].startswith("The file is ")


def test_it_validates_a_large_file_with_bounded_memory(tmp_path):
    path = tmp_path / "large.jsonl"
    padding = "x" * 900
    with path.open("w") as handle:
        for number in range(40_000):
            request = _request(number)
            request["body"]["messages"][0]["content"] = padding
            handle.write(json.dumps(request) + "\n")
    size = path.stat().st_size
    assert size > 35_000_000

    tracemalloc.start()
    try:
        with path.open("rb") as handle:
            report = validate_jsonl(handle, size=size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.is_valid, report.messages
    assert report.requests == 40_000
    assert peak < size / 5, f"peak {peak:,} bytes for a {size:,}-byte file"


# --- The form ---------------------------------------------------------------


def _form(files=None, **data):
    fields = {"completion_window": "24h", "output_expiry_unit": "days", "token": str(uuid.uuid4()), **data}
    return CreateBatchForm(fields, files or {})


def _upload(content: bytes, name: str = "requests.jsonl"):
    return {"input_file": SimpleUploadedFile(name, content, content_type="application/jsonl")}


def test_form_accepts_an_upload_and_infers_the_endpoint():
    form = _form(_upload(_valid_file(2)))
    assert form.is_valid(), form.errors
    assert form.cleaned_data["endpoint"] == CHAT
    assert form.cleaned_data["metadata"] == {}
    assert form.cleaned_data["output_expires_after"] is None


def test_form_reports_line_problems_on_the_file_field():
    form = _form(_upload(_jsonl(_request(1), _request(1))), endpoint=CHAT)
    assert not form.is_valid()
    assert form.errors["input_file"] == ["Line 2: custom_id 'request-1' is already used on line 1."]


def test_form_requires_exactly_one_of_upload_and_file_id():
    neither = _form()
    assert not neither.is_valid()
    assert "Choose a JSONL file to upload" in neither.non_field_errors()[0]

    both = _form(_upload(_valid_file(1)), input_file_id="file-abc123", endpoint=CHAT)
    assert not both.is_valid()
    assert "not both" in both.non_field_errors()[0]


def test_form_checks_the_shape_of_a_file_id_and_needs_an_endpoint_with_it():
    assert _form(input_file_id="file-abc123", endpoint=CHAT).is_valid()
    assert "looks like file-abc123" in _form(input_file_id="abc 123", endpoint=CHAT).errors["input_file_id"][0]
    form = _form(input_file_id="file-abc123")
    assert not form.is_valid()
    assert "Choose the endpoint" in form.errors["endpoint"][0]


def test_form_rejects_an_unknown_endpoint_and_completion_window():
    form = _form(input_file_id="file-abc123", endpoint="/v1/audio/speech", completion_window="48h")
    assert not form.is_valid()
    assert set(form.errors) >= {"endpoint", "completion_window"}


def test_form_collects_up_to_16_metadata_pairs():
    pairs = {}
    for number in range(1, 17):
        pairs[f"metadata_key_{number}"] = f"key{number}"
        pairs[f"metadata_value_{number}"] = f"value {number}"
    form = _form(input_file_id="file-abc123", endpoint=CHAT, metadata_key_17="extra", metadata_value_17="x", **pairs)
    assert form.is_valid(), form.errors
    assert len(form.cleaned_data["metadata"]) == services.METADATA_MAX_PAIRS
    assert "extra" not in form.cleaned_data["metadata"]


def test_form_enforces_metadata_key_and_value_lengths():
    form = _form(
        input_file_id="file-abc123",
        endpoint=CHAT,
        metadata_key_1="k" * 65,
        metadata_value_1="ok",
        metadata_key_2="fine",
        metadata_value_2="v" * 513,
        metadata_key_3="k" * 64,
        metadata_value_3="v" * 512,
    )
    assert not form.is_valid()
    assert set(form.errors) == {"metadata_key_1", "metadata_value_2"}


def test_form_rejects_a_value_without_key_and_duplicate_keys():
    form = _form(
        input_file_id="file-abc123",
        endpoint=CHAT,
        metadata_value_1="orphan",
        metadata_key_2="team",
        metadata_value_2="a",
        metadata_key_3="team",
        metadata_value_3="b",
    )
    assert not form.is_valid()
    assert form.errors["metadata_key_1"] == ["Give this value a key."]
    assert form.errors["metadata_key_3"] == ["The key 'team' is used twice."]


@pytest.mark.parametrize(
    ("amount", "unit", "seconds"),
    [("1", "hours", 3600), ("720", "hours", 2_592_000), ("30", "days", 2_592_000), ("2", "days", 172_800)],
)
def test_form_maps_the_output_expiry_to_seconds(amount, unit, seconds):
    form = _form(input_file_id="file-abc123", endpoint=CHAT, output_expiry_amount=amount, output_expiry_unit=unit)
    assert form.is_valid(), form.errors
    assert form.cleaned_data["output_expires_after"] == seconds


@pytest.mark.parametrize(("amount", "unit"), [("31", "days"), ("0", "hours"), ("-1", "days"), ("721", "hours")])
def test_form_rejects_an_output_expiry_out_of_bounds(amount, unit):
    form = _form(input_file_id="file-abc123", endpoint=CHAT, output_expiry_amount=amount, output_expiry_unit=unit)
    assert not form.is_valid()
    assert "output_expiry_amount" in form.errors


def test_form_needs_its_one_time_token():
    form = _form(input_file_id="file-abc123", endpoint=CHAT, token="")
    assert not form.is_valid()
    assert "token" in form.errors
