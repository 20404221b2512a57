"""The validator's line cap: a line longer than MAX_LINE_BYTES is refused by number before it is parsed, and the
validator's peak memory stays bounded whatever a file holds (measured in a fresh process)."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from batches.forms import MAX_LINE_BYTES, validate_jsonl

# The line cap is a property of the validators' reading: a second database changes nothing.
pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parents[2]
# The refused 60 MB line must cost no more than a few times the cap: the bound stated in the README.
LONG_LINE_PEAK_BOUND = 3 * MAX_LINE_BYTES

# Writes a file of one 60 MB line in pieces (never holding it), then validates it under tracemalloc.
_MEASURE = """
import json, os, sys, tempfile, tracemalloc
os.environ["DJANGO_SETTINGS_MODULE"] = "dashboard.settings"
import django
django.setup()
from batches.forms import validate_jsonl
path = os.path.join(sys.argv[1], "long.jsonl")
with open(path, "wb") as out:
    out.write(b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "x": "')
    for _ in range(60):
        out.write(b"x" * 1_000_000)
    out.write(b'"}}\\n')
    out.write(json.dumps({"custom_id": "b", "method": "POST", "url": "/v1/chat/completions",
                          "body": {"model": "m"}}).encode() + b"\\n")
tracemalloc.start()
with open(path, "rb") as handle:
    report = validate_jsonl(handle, size=os.path.getsize(path))
_, peak = tracemalloc.get_traced_memory()
print(json.dumps({"peak": peak, "messages": report.messages, "requests": report.requests}))
"""


def test_it_refuses_a_60_mb_line_by_number_with_bounded_memory(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["requests"] == 2
    assert len(measured["messages"]) == 1
    assert measured["messages"][0].startswith("Line 1: the line is 57.2")
    assert "at most 10 MB" in measured["messages"][0]
    assert measured["peak"] < LONG_LINE_PEAK_BOUND, f"peak {measured['peak']:,} bytes"


def _line(custom_id: str, padding: int = 0) -> bytes:
    body = {"model": "m", "x": "y" * padding}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}).encode()


def test_it_accepts_a_line_of_exactly_the_cap_and_refuses_one_byte_more():
    base = len(_line("a"))
    exact, over = _line("a", MAX_LINE_BYTES - base), _line("b", MAX_LINE_BYTES - base + 1)
    assert (len(exact), len(over)) == (MAX_LINE_BYTES, MAX_LINE_BYTES + 1)  # the newline is not counted
    report = validate_jsonl(io.BytesIO(exact + b"\n" + over + b"\n" + _line("c") + b"\n"))
    assert report.requests == 3
    assert report.line_errors == [report.line_errors[0]]
    assert report.line_errors[0].startswith("Line 2: the line is 10 MB")  # batches.formatting.format_size


def test_it_counts_a_long_last_line_without_a_newline_and_the_size_of_every_line():
    content = _line("a") + b"\n" + _line("b", MAX_LINE_BYTES + 5)
    report = validate_jsonl(io.BytesIO(content))
    assert report.size == len(content)
    assert report.requests == 2
    assert [m[:8] for m in report.messages] == ["Line 2: "]


def test_it_reports_blank_lines_before_a_long_line():
    report = validate_jsonl(io.BytesIO(_line("a") + b"\n\n" + _line("b", MAX_LINE_BYTES) + b"\n"))
    assert [m[:8] for m in report.messages] == ["Line 2: ", "Line 3: "]
