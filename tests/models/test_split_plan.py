"""How a file over the API's limits is planned as parts: on line boundaries, every byte in exactly one part, each
part within both limits, the whole file checked as one (custom_ids unique across parts) in bounded memory."""

import io
import json
import tracemalloc

import pytest

from batches import services
from batches.forms import MAX_PARTS, _IdTable, validate_jsonl

CHAT = "/v1/chat/completions"


def _line(number: int, custom_id: str | None = None) -> bytes:
    request = {
        "custom_id": custom_id or f"q{number}",
        "method": "POST",
        "url": CHAT,
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * (number % 7)}]},
    }
    return json.dumps(request).encode()


def _file(count: int, *, last_newline: bool = True, trailing_blank: bool = False) -> bytes:
    content = b"\n".join(_line(n) for n in range(1, count + 1)) + (b"\n" if last_newline else b"")
    return content + (b"\n\n" if trailing_blank else b"")


def _pieces(content: bytes, report) -> list[bytes]:
    return [content[part.start : part.start + part.length] for part in report.parts]


@pytest.fixture
def limits(monkeypatch):
    def set_limits(requests: int, size: int = services.MAX_INPUT_FILE_BYTES):
        monkeypatch.setattr(services, "MAX_REQUESTS_PER_BATCH", requests)
        monkeypatch.setattr(services, "MAX_INPUT_FILE_BYTES", size)

    return set_limits


def test_a_file_within_the_limits_is_one_part_either_way():
    content = _file(3)
    report = validate_jsonl(io.BytesIO(content), split=True)
    assert report.is_valid and not report.is_split
    assert _pieces(content, report) == [content]


@pytest.mark.parametrize(("last_newline", "trailing_blank"), [(True, False), (False, False), (True, True)])
def test_it_cuts_by_request_count_keeping_every_byte(limits, last_newline, trailing_blank):
    limits(2)
    content = _file(5, last_newline=last_newline, trailing_blank=trailing_blank)
    report = validate_jsonl(io.BytesIO(content), split=True)
    assert report.is_valid, report.messages
    assert [part.requests for part in report.parts] == [2, 2, 1]
    assert [part.first_line for part in report.parts] == [1, 3, 5]
    assert b"".join(_pieces(content, report)) == content
    assert report.split_summary == "3 batches of 2, 2 and 1 requests"


def test_it_cuts_by_size_before_the_line_that_would_not_fit(limits):
    content = _file(10)
    longest_two = max(len(a) + len(b) + 2 for a, b in zip(content.split(b"\n"), content.split(b"\n")[1:], strict=False))
    limits(50_000, longest_two)
    report = validate_jsonl(io.BytesIO(content), split=True)
    assert report.is_valid, report.messages
    assert all(part.length <= longest_two for part in report.parts)
    assert all(
        piece.endswith(b"\n") and piece.count(b"\n") == part.requests
        for piece, part in zip(_pieces(content, report), report.parts, strict=True)
    )
    assert b"".join(_pieces(content, report)) == content


def test_without_split_the_limits_still_refuse(limits):
    limits(2)
    report = validate_jsonl(io.BytesIO(_file(5)))
    assert "Split it into several files" in report.messages[-1]


def test_a_custom_id_is_unique_across_the_whole_file_not_only_within_a_part(limits):
    limits(2)
    content = _file(4) + _line(5, custom_id="q1") + b"\n"
    report = validate_jsonl(io.BytesIO(content), split=True)
    assert report.messages == ["Line 5: custom_id 'q1' is already used on line 1."]


def test_one_endpoint_and_one_model_across_the_parts(limits):
    limits(2)
    other = json.loads(_line(5))
    other["body"]["model"] = "gpt-4o"
    report = validate_jsonl(io.BytesIO(_file(4) + json.dumps(other).encode()), split=True)
    assert len(report.messages) == 1 and "a batch runs a single model" in report.messages[0]


def test_it_refuses_a_file_over_the_upload_setting_without_reading_it(settings):
    settings.BATCHBOARD_MAX_UPLOAD_BYTES = 2 * 1024**3

    class Unreadable(io.BytesIO):
        def readline(self, *args):
            raise AssertionError("an oversized file must not be read")

    report = validate_jsonl(Unreadable(), size=2 * 1024**3 + 1, split=True)
    [message] = report.messages
    assert message.startswith("The file is ") and "(2,147,483,649 bytes)" in message
    assert message.endswith(
        "this dashboard takes files of at most 2 GB (2,147,483,648 bytes) (BATCHBOARD_MAX_UPLOAD_BYTES)."
    )


def test_it_refuses_more_parts_than_a_job_holds(limits):
    limits(1)
    report = validate_jsonl(io.BytesIO(_file(MAX_PARTS + 1)), split=True)
    assert report.messages == [
        f"The file would be sent as {MAX_PARTS + 1:,} batches; a job holds at most {MAX_PARTS:,}."
    ]


def test_the_id_table_finds_every_id_again_after_growing():
    table = _IdTable(capacity=4)
    for number in range(1, 5_000):
        assert table.first_line(number * 0x9E3779B97F4A7C15 % 2**64, number) == number
    for number in range(1, 5_000):
        assert table.first_line(number * 0x9E3779B97F4A7C15 % 2**64, 10**6) == number
    assert table.first_line(0, 7) == 7 and table.first_line(0, 8) == 7  # 0 is a digest like any other


@pytest.mark.once
def test_a_file_of_many_short_lines_is_checked_in_bounded_memory(tmp_path, limits):
    """Short lines are where the duplicate check dominates: 200,000 ids take a few MB (a dict of digests took ten
    times as much). Measured: 11.6 MB of peak Python memory for these 200,000 ids."""
    path = tmp_path / "many.jsonl"
    with path.open("wb") as handle:
        for number in range(200_000):
            line = b'{"custom_id":"c%d","method":"POST","url":"/v1/embeddings","body":{"model":"m","input":"x"}}\n'
            handle.write(line % number)
    tracemalloc.start()
    try:
        with path.open("rb") as handle:
            report = validate_jsonl(handle, split=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.is_valid, report.messages
    assert [part.requests for part in report.parts] == [50_000] * 4
    assert peak < 20 * 1024 * 1024, f"peak {peak:,} bytes"


def test_a_range_of_a_file_reads_as_a_file_of_its_own():
    handle = io.BytesIO(b"0123456789")
    part = services.FileRange(handle, 3, 4)
    assert part.read() == b"3456"
    assert part.seek(0, io.SEEK_END) == 4 and part.read(2) == b""
    part.seek(1)
    assert part.read(2) == b"45" and part.tell() == 3
    part.seek(0)
    assert b"".join(iter(lambda: part.read(3), b"")) == b"3456"
