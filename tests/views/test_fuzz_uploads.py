"""Fuzz: 1,000 seeded JSONL files (bad UTF-8, lines over the cap, deep nesting, NUL bytes, duplicate ids, BOMs,
CRLF, blank lines) through the create form and through the sandbox's upload and create: no 500, no upstream call
for a file the form refuses, and the validator's peak memory under the stated bound."""

import json
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
import requests
from django.core.files.uploadedfile import SimpleUploadedFile

from batches.forms import MAX_LINE_BYTES
from tests.jsonl_fuzz import FILES, corpus

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
# The validator's peak for any file of the corpus (the README states it): a few times the line cap.
PEAK_BOUND = 3 * MAX_LINE_BYTES
# The sandbox on main has no line cap yet, lets an encoded surrogate through json.loads(bytes) and does not catch
# RecursionError: until its own validation lands, its part of the fuzz leaves those three out.
SANDBOX_CORPUS = {"huge": False, "max_depth": 500, "surrogates": False}
SANDBOX_KEY = {"Authorization": "Bearer sk-sandbox"}


def test_the_create_form_refuses_every_broken_file_without_an_upstream_call(operator_client, fake_api):
    operator_client.raise_request_exception = False
    statuses, refused, kinds = Counter(), 0, Counter()
    for number, (kind, content, surely_invalid) in enumerate(corpus()):
        kinds[kind] += 1
        calls_before = len(fake_api.received)
        fields = {"token": str(uuid.UUID(int=number + 1)), "completion_window": "24h", "output_expiry_unit": "days"}
        upload = SimpleUploadedFile(f"fuzz-{number}.jsonl", content, content_type="application/jsonl")
        response = operator_client.post("/batches/new/", {**fields, "input_file": upload})
        statuses[response.status_code] += 1
        assert response.status_code in (200, 303), (number, kind, response.status_code)
        form = response.context["form"]
        # Refused by the validator, or before it (Django's own check of an empty upload).
        invalid = not form.report.is_valid if form.report is not None else "input_file" in form.errors
        if surely_invalid:
            assert invalid, (number, kind)
        if invalid:
            refused += 1
            assert len(fake_api.received) == calls_before, (number, kind, "an invalid file reached the API")
    assert sum(kinds.values()) == FILES
    assert statuses[500] == 0
    assert refused >= sum(1 for _, _, invalid in corpus(huge=False) if invalid)


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


def test_the_sandbox_never_answers_500_to_a_fuzzed_upload(sandbox_url):
    session = requests.Session()
    session.headers.update(SANDBOX_KEY)
    statuses = Counter()
    for number, (kind, content, _invalid) in enumerate(corpus(**SANDBOX_CORPUS)):
        uploaded = session.post(
            f"{sandbox_url}/files",
            data={"purpose": "batch"},
            files={"file": (f"fuzz-{number}.jsonl", content, "application/jsonl")},
            timeout=60,
        )
        statuses[uploaded.status_code] += 1
        assert uploaded.status_code < 500, (number, kind, uploaded.text[:200])
        if uploaded.status_code != 200:
            continue
        created = session.post(
            f"{sandbox_url}/batches",
            json={
                "input_file_id": uploaded.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
            timeout=60,
        )
        statuses[created.status_code] += 1
        assert created.status_code < 500, (number, kind, created.text[:200])
    assert statuses[200] > 0 and not [s for s in statuses if s >= 500]
