"""The estimate before sending: tokens counted with tiktoken from local encoding files (a tiny one built here) or
estimated from the text's length without them, output bounded by max_tokens, priced with the Batch table."""

import base64
import hashlib
import io
import json
import uuid
from decimal import Decimal

import pytest
import tiktoken.load
import tiktoken_ext.openai_public
from django.core.files.uploadedfile import SimpleUploadedFile

from batches import estimate
from batches.estimate import InputCounter, encoding_name_for
from batches.forms import CreateBatchForm, validate_jsonl

# The estimate is counted from the upload's bytes: a second database changes nothing.
pytestmark = pytest.mark.once

CHAT = "/v1/chat/completions"
# A tiny vocabulary: every single byte, and merges that make "hello" one token.
MERGES = [b"he", b"hel", b"hell", b"hello"]


def _write_encoding(directory, name="o200k_base", *, tiktoken_cache_name=True):
    """An encoding file in tiktoken's format (`<base64 token> <rank>` per line), named as tiktoken's cache names it
    (the SHA-1 of its download URL) or as `<name>.tiktoken`."""
    tokens = [bytes([b]) for b in range(256)] + MERGES
    text = "".join(f"{base64.b64encode(token).decode()} {rank}\n" for rank, token in enumerate(tokens))
    url = estimate.ENCODING_URLS[name]
    filename = hashlib.sha1(url.encode()).hexdigest() if tiktoken_cache_name else f"{name}.tiktoken"  # noqa: S324
    (directory / filename).write_text(text)
    return directory / filename


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch, settings):
    """tiktoken's own loader (which downloads what it lacks) is never used; no tokenizer directory by default."""

    def refuse(*args, **kwargs):
        raise AssertionError("tiktoken tried to read or download an encoding file")

    monkeypatch.setattr(tiktoken.load, "read_file", refuse)
    monkeypatch.setattr(tiktoken.load, "read_file_cached", refuse)
    settings.TIKTOKEN_CACHE_DIR = ""


@pytest.fixture
def tokenizer_dir(settings, tmp_path):
    directory = tmp_path / "tiktoken"
    directory.mkdir()
    _write_encoding(directory)
    settings.TIKTOKEN_CACHE_DIR = str(directory)
    return directory


def _request(content="hello hello", model="gpt-4o-mini", number=1, **body):
    return {
        "custom_id": f"r{number}",
        "method": "POST",
        "url": CHAT,
        "body": {"model": model, "messages": [{"role": "user", "content": content}], **body},
    }


def _count(*requests, endpoint=None):
    counter = InputCounter(endpoint)
    for request in requests:
        counter.add(request)
    return counter.result()


def test_the_split_patterns_and_special_tokens_match_the_installed_tiktoken(monkeypatch):
    monkeypatch.setattr(tiktoken_ext.openai_public, "load_tiktoken_bpe", lambda *args, **kwargs: {})
    for name in estimate.ENCODING_URLS:
        spec = tiktoken_ext.openai_public.ENCODING_CONSTRUCTORS[name]()
        assert spec["pat_str"] == estimate.PATTERNS[name]
        assert spec["special_tokens"] == estimate.SPECIAL_TOKENS[name]
        assert f"/{name}.tiktoken" in estimate.ENCODING_URLS[name]


@pytest.mark.parametrize(
    ("model", "name"),
    [("gpt-4o-mini-2024-07-18", "o200k_base"), ("gpt-4-0613", "cl100k_base"), ("acme-model", "o200k_base")],
)
def test_it_picks_the_models_encoding(model, name):
    assert encoding_name_for(model) == name


def test_with_the_tokenizer_files_it_counts_tokens_exactly(tokenizer_dir):
    result = _count(_request("hello hello"))
    # "hello" and " hello" split apart; " hello" is " " + "hello" in the tiny vocabulary: 3 tokens of text, then
    # 3 for the message's formatting, 1 for its role ("user" is 4 single bytes: 4 tokens), 3 to prime the reply.
    assert result.exact and result.encoding == "o200k_base"
    assert result.input_tokens == 3 + 4 + 3 + 3


def test_it_reads_a_file_named_after_the_encoding_too(settings, tmp_path):
    _write_encoding(tmp_path, tiktoken_cache_name=False)
    settings.TIKTOKEN_CACHE_DIR = str(tmp_path)
    assert _count(_request()).exact


def test_a_file_that_is_not_a_tiktoken_file_falls_back_to_the_length_estimate(settings, tmp_path):
    (tmp_path / "o200k_base.tiktoken").write_text("this is not base64 and ranks\n")
    settings.TIKTOKEN_CACHE_DIR = str(tmp_path)
    assert not _count(_request()).exact


def test_without_tokenizer_files_it_estimates_from_the_texts_length():
    result = _count(_request("hello hello"))
    assert not result.exact and result.encoding == ""
    # 11 bytes of content and 4 of role: 3 + 1 tokens at 4 bytes each, plus the message and reply overhead.
    assert result.input_tokens == 3 + 1 + 3 + 3


def test_the_length_estimate_counts_cjk_text_by_its_bytes_not_its_characters():
    result = _count(_request("日本語の文章" * 10))  # 60 characters, 180 bytes
    assert result.input_tokens - 1 - 6 == 45


def test_the_output_bound_is_the_sum_of_each_lines_limit_times_its_choices():
    result = _count(
        _request(number=1, max_tokens=100),
        _request(number=2, max_completion_tokens=50, n=3),
        _request(number=3, max_output_tokens=10),
    )
    assert result.output_tokens_bound == 100 + 150 + 10
    assert result.unbounded_requests == 0


def test_lines_without_a_limit_are_counted_as_unbounded():
    result = _count(_request(number=1, max_tokens=100), _request(number=2))
    assert result.output_tokens_bound == 100 and result.unbounded_requests == 1


def test_embeddings_have_no_output_and_token_arrays_count_as_given():
    lines = [
        {"custom_id": "e1", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "text-embedding-3-small", "input": [1, 2, 3, 4]}},
        {"custom_id": "e2", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "text-embedding-3-small", "input": ["abcd", "efgh"]}},
    ]  # fmt: skip
    result = _count(*lines)
    assert result.unbounded_requests == 0 and result.output_tokens_bound == 0
    assert result.input_tokens == 4 + 1 + 1
    assert result.max_cost == result.input_cost


def test_images_are_reported_not_counted():
    content = [
        {"type": "text", "text": "abcd"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 4000}},
    ]
    result = _count(_request(content))
    assert result.media_parts == 1
    assert result.input_tokens < 20


def test_tool_schemas_count_as_input():
    plain = _count(_request("abcd")).input_tokens
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    assert _count(_request("abcd", tools=tools)).input_tokens > plain + 10


def test_the_estimate_is_priced_with_the_batch_table():
    result = _count(*[_request("a" * 4000, number=n, max_tokens=1000) for n in range(1000)])
    # 1000 requests of 1000 + 1 + 3 + 3 tokens at $0.075 per million; 1,000,000 output tokens at most at $0.30.
    assert result.input_tokens == 1_007_000
    assert result.input_cost == Decimal("0.075525")
    assert result.max_cost == Decimal("0.075525") + Decimal("0.30")


def test_a_model_without_a_price_gets_tokens_and_no_amount():
    result = _count(_request(model="acme-model", max_tokens=5))
    assert result.price is None and result.input_cost is None and result.max_cost is None
    assert result.input_tokens > 0


def test_the_count_runs_in_the_validation_pass():
    content = "".join(json.dumps(_request(number=n, max_tokens=5)) + "\n" for n in range(50)).encode()
    counter = InputCounter()
    report = validate_jsonl(io.BytesIO(content), observe=counter.add)
    assert report.is_valid and counter.result().requests == 50 and counter.result().output_tokens_bound == 250


def _form(content: bytes, **fields):
    data = {"token": str(uuid.uuid4()), "endpoint": "", "completion_window": "24h", "output_expiry_unit": "days",
            "input_file_id": "", **fields}  # fmt: skip
    files = {"input_file": SimpleUploadedFile("requests.jsonl", content, content_type="application/jsonl")}
    return CreateBatchForm(data, files)


def test_the_form_estimates_a_valid_upload_and_not_an_invalid_one():
    valid = "".join(json.dumps(_request(number=n, max_tokens=5)) + "\n" for n in range(3)).encode()
    form = _form(valid)
    assert form.is_valid()
    assert form.estimate.requests == 3 and form.estimate.price is not None
    invalid = _form(valid + b"not json\n")
    assert not invalid.is_valid() and invalid.estimate is None


@pytest.mark.django_db
@pytest.mark.parametrize("tokenizer", [True, False], ids=["tiktoken", "length"])
def test_the_create_page_shows_the_estimate_and_how_it_was_made(operator_client, tokenizer, request):
    if tokenizer:
        request.getfixturevalue("tokenizer_dir")
    lines = [_request("hello " * 500, number=n, max_tokens=200) for n in range(3)]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    data = {"token": str(uuid.uuid4()), "endpoint": "", "completion_window": "24h", "output_expiry_unit": "days",
            "input_file_id": "", "metadata_value_1": "a value without a key",
            "input_file": SimpleUploadedFile("requests.jsonl", content, content_type="application/jsonl")}  # fmt: skip
    page = operator_client.post("/batches/new/", data).text  # re-shown for the metadata error: nothing is sent
    section = page.split('id="cost-estimate"')[1].split("</section>")[0]
    assert "About <strong>$" in section and "for the inputs" in section
    assert "at most <strong>$" in section and "if every answer uses its full max_tokens" in section
    assert "600 output tokens" in section
    if tokenizer:
        assert "counted with tiktoken (o200k_base)" in section and "character counts" not in section
    else:
        assert "Estimated from character counts" in section and "TIKTOKEN_CACHE_DIR" in section
