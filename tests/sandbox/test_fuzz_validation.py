"""Fuzz: the 1,000 seeded JSONL files through the sandbox's validation of a batch's input, the function its create
runs on the uploaded file (the upload itself only streams the bytes to disk): it never raises, answers every
problem in the API's error shape with a line number, and refuses every surely broken file, the lines over the cap,
encoded surrogates and nesting deeper than the parser goes included. A sample of the same files goes through the
sandbox's HTTP upload and create in tests/views/test_fuzz_uploads.py."""

import json

import pytest

from sandbox import validation
from tests.jsonl_fuzz import FILES, corpus

# A pure function of the file's bytes: a second database changes nothing.
pytestmark = pytest.mark.once

CHAT = "/v1/chat/completions"
CODES = {"invalid_json_line", "invalid_request", "duplicate_custom_id", "url_mismatch", "model_mismatch", "empty_file"}


def test_the_sandbox_validation_refuses_every_surely_broken_file_in_the_apis_shape(tmp_path):
    path = tmp_path / "input.jsonl"
    kinds_refused, files = set(), 0
    for number, (kind, content, surely_invalid) in enumerate(corpus()):
        path.write_bytes(content)
        scan = validation.scan_input(path, CHAT)
        files += 1
        if surely_invalid:
            assert scan.errors, (number, kind)
        if scan.errors:
            kinds_refused.add(kind)
            assert scan.total == 0, (number, kind)
            for error in scan.errors:
                assert error["code"] in CODES, (number, kind, error)
                assert error["line"] is None or error["line"] >= 1, (number, kind, error)
            json.dumps(scan.errors)  # stored with the batch and sent as JSON
        else:
            assert scan.total > 0 and scan.checkpoints, (number, kind)
    assert files == FILES
    assert {"huge_line", "bad_utf8", "deep_nesting"} <= kinds_refused
