"""Request bodies are refused from their declared length before anything reads them (1 MB, or 210 MB on the create
page for users who may create), over a real socket as well; a NUL byte in the list's filters never reaches a query."""

import socket
import time
from urllib.parse import urlsplit

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from batches.middleware import MAX_BODY_BYTES, UPLOAD_FRAMING_BYTES, upload_body_limit

pytestmark = pytest.mark.django_db

GB = 1024**3


def _declared(client, url, length, **extra):
    """A POST whose Content-Length claims `length` bytes while only a few are sent: it must be refused unread."""
    return client.post(url, {"username": "x"}, CONTENT_LENGTH=str(length), **extra)


def test_it_refuses_a_large_body_to_the_login_page_before_reading_it(client):
    response = _declared(client, "/accounts/login/", int(1.5 * GB))
    assert response.status_code == 413
    assert "Request too large" in response.content.decode()


@pytest.mark.parametrize("url", ["/accounts/login/", "/admin/login/", "/batches/cancel/", "/batches/"])
def test_it_refuses_a_body_over_one_megabyte_anywhere_but_the_create_page(operator_client, url):
    assert _declared(operator_client, url, MAX_BODY_BYTES + 1).status_code == 413


def test_it_allows_the_upload_limit_on_the_create_page_only_to_users_who_may_create(operator_client, viewer, client):
    assert upload_body_limit() == 1024**3 + UPLOAD_FRAMING_BYTES  # BATCHBOARD_MAX_UPLOAD_BYTES's default, and framing
    refused = _declared(operator_client, "/batches/new/", upload_body_limit() + 1)
    assert refused.status_code == 413
    assert "Request too large" in refused.content.decode() and "BATCHBOARD_MAX_UPLOAD_BYTES" in refused.content.decode()
    client.force_login(viewer)
    assert _declared(client, "/batches/new/", 5 * 1024 * 1024).status_code == 413
    client.logout()
    assert _declared(client, "/batches/new/", 5 * 1024 * 1024).status_code == 413


def test_it_takes_a_real_upload_above_one_megabyte_on_the_create_page(operator_client, fake_api):
    line = b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "'
    content = line + b"x" * (2 * MAX_BODY_BYTES) + b'"}}\n'
    fields = {"token": "3b241101-e2bb-4255-8caf-4136c566a962", "completion_window": "24h", "output_expiry_unit": "days"}
    response = operator_client.post("/batches/new/", {**fields, "input_file": SimpleUploadedFile("a.jsonl", content)})
    assert response.status_code == 200  # the form, with the upstream's refusal: the body was read
    assert fake_api.requests_to("POST", "/files")


def test_it_answers_a_huge_declared_body_at_once_over_a_socket(live_server):
    """The server answers 413 after the headers, without waiting for (or spooling) the 1.5 GB."""
    address = urlsplit(live_server.url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(
            b"POST /accounts/login/ HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n"
            + f"Content-Length: {int(1.5 * GB)}\r\n\r\n".encode()
            + b"--x\r\n"
        )
        started = time.monotonic()
        answer = sock.recv(200)
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert waited < 10  # the recv timeout: it never waited for the body


def test_it_strips_a_nul_byte_from_the_search(viewer_client, fake_api):
    """PostgreSQL refuses a NUL in a text parameter (a 500); SQLite silently cuts the string there."""
    sent = []

    def spy(execute, sql, params, many, context):
        sent.extend(str(value) for value in (params or ()) if isinstance(value, str))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(spy):
        for url in ("/batches/?q=%00", "/batches/?q=night%00ly&model=%00", "/batches/?endpoint=%00"):
            response = viewer_client.get(url)
            assert response.status_code == 200
            assert "\x00" not in response.content.decode()
            assert viewer_client.get(url, headers={"HX-Request": "true"}).status_code in (200, 286)
    assert any("nightly" in value for value in sent)  # the search ran, without the NUL
    assert not [value for value in sent if "\x00" in value]
