"""Fuzz: the 1,000 seeded JSONL files (bad UTF-8, lines over the cap, deep nesting, NUL bytes, duplicate ids, BOMs,
CRLF, blank lines) through the create form's validation, as the form runs it (with the estimate counting each
request): it never raises, refuses every surely broken file with a message, and its peak memory stays under the
stated bound. A sample of the same files goes through the create page in tests/views/test_fuzz_uploads.py."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from batches.estimate import InputCounter
from batches.forms import MAX_LINE_BYTES, validate_jsonl
from tests.jsonl_fuzz import FILES, corpus

# Pure functions of the file's bytes: a second database changes nothing.
pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parents[2]
# The validator's peak for any file of the corpus (the README states it): a few times the line cap.
PEAK_BOUND = 3 * MAX_LINE_BYTES


def test_the_form_validation_refuses_every_surely_broken_file_with_a_message():
    files = refused = 0
    for number, (kind, content, surely_invalid) in enumerate(corpus()):
        counter = InputCounter()
        report = validate_jsonl(io.BytesIO(content), size=len(content), observe=counter.add)
        files += 1
        if surely_invalid:
            assert not report.is_valid, (number, kind)
        if not report.is_valid:
            refused += 1
            assert report.messages, (number, kind)
        else:
            assert report.requests == counter.requests > 0, (number, kind)
    assert files == FILES
    assert 0 < refused < FILES


_MEASURE = """
import io, json, os, tracemalloc
os.environ["DJANGO_SETTINGS_MODULE"] = "dashboard.settings"
import django
django.setup()
from batches.forms import validate_jsonl
from tests.jsonl_fuzz import corpus
tracemalloc.start()
worst, worst_kind, files = 0, "", 0
for kind, content, invalid in corpus():
    handle = io.BytesIO(content)
    baseline = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    validate_jsonl(handle, size=len(content))
    peak = tracemalloc.get_traced_memory()[1] - baseline
    files += 1
    if peak > worst:
        worst, worst_kind = peak, kind
    del handle, content
print(json.dumps({"worst": worst, "kind": worst_kind, "files": files}))
"""


def test_the_validator_peak_memory_stays_under_the_bound_for_every_fuzzed_file():
    result = subprocess.run([sys.executable, "-c", _MEASURE], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["files"] == FILES
    assert measured["worst"] < PEAK_BOUND, measured
