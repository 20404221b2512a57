"""Fuzz through HTTP: a sample of the seeded JSONL corpus (every kind of broken file, one line over the cap among
them) through the create page and through the sandbox's upload and create. No 500; no upstream call for a file the
form refuses, an upload for each file it accepts; the sandbox's verdicts stored with its batches. The whole corpus of
1,000 files goes through each validator directly, in tests/models/test_fuzz_validation.py and
tests/sandbox/test_fuzz_validation.py."""

import uuid
from collections import Counter

import pytest
import requests
from django.core.files.uploadedfile import SimpleUploadedFile

from sandbox.models import SandboxBatch
from tests.jsonl_fuzz import SAMPLE, sample

pytestmark = pytest.mark.django_db

SANDBOX_KEY = {"Authorization": "Bearer sk-sandbox"}


def test_the_create_page_refuses_each_broken_file_of_the_sample_without_an_upstream_call(
    operator_client, fake_api, settings
):
    settings.BATCHBOARD_USER_CREATE_LIMIT = (
        1000  # one user sends the whole sample: the per-user limit is tested elsewhere
    )
    operator_client.raise_request_exception = False
    statuses, kinds, sent = Counter(), Counter(), 0
    for number, kind, content, surely_invalid in sample():
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
            assert len(fake_api.received) == calls_before, (number, kind, "an invalid file reached the API")
        else:
            sent += 1
            assert len(fake_api.received) > calls_before, (number, kind, "a valid file was not sent")
    assert sum(kinds.values()) == SAMPLE and kinds["huge_line"] == 1
    assert sent > 0 and statuses[500] == 0


def test_the_sandbox_never_answers_500_to_a_fuzzed_upload(sandbox_url):
    session = requests.Session()
    session.headers.update(SANDBOX_KEY)
    statuses, refused = Counter(), 0
    for number, kind, content, surely_invalid in sample():
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
        if created.status_code == 200:
            # The file was validated at creation: the batch will fail with these errors, stored with it.
            errors = SandboxBatch.objects.get(pk=created.json()["id"]).errors
            refused += bool(errors)
            if surely_invalid:
                assert errors, (number, kind)
    assert statuses[200] > 0 and refused > 0
