"""Every documented operation of the API, driven by schemathesis against the live test server: requests generated
from the OpenAPI document (valid ones and invalid ones), sent with a token holding every scope over a seeded
database, and each answer checked against the document (a documented status, its content type and body, its
headers, never a 5xx).

Bounded: a few derandomized examples per operation (the same ones on every run), under a time budget."""

from __future__ import annotations

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode, checks
from schemathesis.core.failures import FailureGroup

from api.endpoints import api
from batches.middleware import MAX_BODY_BYTES
from tests.api.conftest import make_token
from tests.conftest import kept_batch, kept_retry

pytestmark = [pytest.mark.once, pytest.mark.django_db(transaction=True)]

EXAMPLES_PER_OPERATION = 4  # of valid requests, and as many of invalid ones
BUDGET_SECONDS = 20
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
HYPOTHESIS = hypothesis_settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def _failure(case, exc: Exception) -> str:
    return f"{case.operation.label}: {case.path} {case.query or ''}\n{exc}"


def test_every_answer_of_every_operation_conforms_to_the_schema(live_server, sandbox_url, operator, settings, tmp_path):
    settings.BATCHBOARD_API_TOKEN_PER_MINUTE = 100_000
    settings.BATCHBOARD_USER_CREATE_LIMIT = 100_000
    original = kept_batch({"a": "ok", "b": 429, "c": 500, "d": "expired"}, tmp_path)
    kept_retry(original, {"b": "ok", "c": 429}, tmp_path)
    _token, secret = make_token(operator)
    headers = {"Authorization": f"Bearer {secret}"}
    schema = schemathesis.openapi.from_dict(api.get_openapi_schema())
    failures: list[str] = []
    tried: dict[str, int] = {}
    deadline = time.monotonic() + BUDGET_SECONDS

    def run(case) -> None:
        tried[case.operation.label] = tried.get(case.operation.label, 0) + 1
        if tried[case.operation.label] == 1:
            probe(case)
        # As generated (an id that is mostly no batch), then on the seeded batch, whose answers are the real ones.
        variants = [case]
        if "batch_id" in (case.path_parameters or {}):
            seeded = case.operation.Case(
                path_parameters={**case.path_parameters, "batch_id": original.batch_id},
                query=case.query,
                headers=case.headers,
                body=case.body,
                media_type=case.media_type,
            )
            variants.append(seeded)
        for variant in variants:
            try:
                variant.call_and_validate(base_url=live_server.url, headers=headers, checks=CHECKS, timeout=30)
            except (AssertionError, FailureGroup) as exc:
                failures.append(_failure(variant, exc))

    def probe(case) -> None:
        """Once per operation, the answers no generated request gets: a token that is no token (401), and a body
        over the limit of what a request may carry (413)."""
        attempts = [{"headers": {"Authorization": "Bearer bb_not_a_live_token"}}]
        if case.method.upper() == "POST":
            attempts.append({"headers": headers, "data": b"x" * (MAX_BODY_BYTES + 1)})
        for attempt in attempts:
            response = case.call(base_url=live_server.url, timeout=30, **attempt)
            try:
                case.validate_response(response, checks=CHECKS)
            except (AssertionError, FailureGroup) as exc:
                failures.append(_failure(case, exc))

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @HYPOTHESIS
            def check(case) -> None:
                if time.monotonic() < deadline:
                    run(case)

            check()

    assert not failures, "\n\n".join(failures[:10]) + f"\n\n({len(failures)} failures)"
    operations = {result.ok().label for result in schema.get_all_operations()}
    assert set(tried) == operations, f"not reached within {BUDGET_SECONDS} s: {operations - set(tried)}"
