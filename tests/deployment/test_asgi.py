"""Finding 11 (issue 18): under ASGI a body is bounded as it arrives. dashboard.asgi's application is driven directly
with a fake server: a receive() that hands out 1 MB chunks and counts them, and a send() that keeps the answer."""

import asyncio
import json
import re

import pytest
from asgiref.sync import async_to_sync
from django.core import signals
from django.db import close_old_connections
from django.test import Client

from batches import middleware
from dashboard import bounded_asgi

pytestmark = pytest.mark.django_db

MB = 1024 * 1024
CHUNK = b"x" * MB


@pytest.fixture(autouse=True)
def _keep_the_test_connection():
    """What Django's test client does around a request: the test's transaction must survive the request's end."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


class FakeServer:
    """One request to the application: its body in `chunks` chunks of 1 MB, then the client waits for the answer."""

    def __init__(self, chunks: int, body: bytes | None = None):
        self.chunks = chunks
        self.body = b"" if body is None and not chunks else body
        self.read = 0
        self.sent = []

    async def receive(self):
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        if self.read < self.chunks:
            self.read += 1
            return {"type": "http.request", "body": CHUNK, "more_body": self.read < self.chunks}
        await asyncio.Event().wait()  # the body is complete: the client waits for the answer

    async def send(self, message):
        self.sent.append(message)

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.sent if m["type"] == "http.response.start")

    @property
    def text(self) -> str:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body").decode()


def _request(path, server, *, method="POST", headers=(), client_address="10.0.0.1"):
    from dashboard.asgi import application

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": (client_address, 50000),
        "server": ("127.0.0.1", 8000),
    }
    async_to_sync(application)(scope, server.receive, server.send)
    return server


def _session_cookie(user) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


def test_finding_11_a_chunked_200_mb_body_is_refused_after_the_first_mb_not_read_whole():
    server = _request("/accounts/login/", FakeServer(chunks=200))

    assert server.status == 413
    assert server.read == 2  # the chunk that crossed 1 MB: nothing after it
    assert "Request too large" in server.text and "at most 1 MB" in server.text


def test_finding_11_a_declared_content_length_above_the_limit_is_refused_before_reading_anything():
    server = _request("/accounts/login/", FakeServer(chunks=200), headers=[(b"content-length", str(200 * MB).encode())])

    assert server.status == 413
    assert server.read == 0


def test_finding_11_a_body_longer_than_its_content_length_is_counted_as_it_arrives():
    server = _request("/accounts/login/", FakeServer(chunks=200), headers=[(b"content-length", b"10")])

    assert server.status == 413
    assert server.read == 2


def test_finding_11_the_create_page_takes_an_upload_only_from_a_user_who_may_create(
    operator, viewer, monkeypatch, settings
):
    settings.BATCHBOARD_MAX_UPLOAD_BYTES = 5 * MB
    monkeypatch.setattr(middleware, "UPLOAD_FRAMING_BYTES", 0)

    anonymous = _request("/batches/new/", FakeServer(chunks=200))
    looker = _request("/batches/new/", FakeServer(chunks=200), headers=[_session_cookie(viewer)])
    creator = _request("/batches/new/", FakeServer(chunks=200), headers=[_session_cookie(operator)])

    assert (anonymous.status, anonymous.read) == (413, 2)
    assert (looker.status, looker.read) == (413, 2)
    assert (creator.status, creator.read) == (413, 6)
    assert "at most 5 MB" in creator.text


def test_finding_11_a_body_within_the_limit_reaches_the_view(viewer):
    page = _request("/accounts/login/", FakeServer(chunks=0), method="GET")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)[1]
    cookie = next(
        value.split(b";")[0]
        for message in page.sent
        if message["type"] == "http.response.start"
        for name, value in message["headers"]
        if name.lower() == b"set-cookie" and value.startswith(b"csrftoken=")
    )
    body = f"csrfmiddlewaretoken={token}&username=viewer&password=pw-viewer".encode()
    headers = [
        (b"cookie", cookie),
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"content-length", str(len(body)).encode()),
    ]

    login = _request("/accounts/login/", FakeServer(chunks=0, body=body), headers=headers)

    assert login.status == 302


def test_finding_11_the_sandbox_api_answers_a_body_over_its_largest_file_in_its_error_envelope(monkeypatch):
    monkeypatch.setattr(bounded_asgi, "MAX_FILE_BYTES", 3 * MB)
    monkeypatch.setattr(bounded_asgi, "SANDBOX_FRAMING_BYTES", 0)
    headers = [(b"authorization", b"Bearer sk-sandbox"), (b"content-type", b"multipart/form-data; boundary=xyz")]

    server = _request("/sandbox/v1/files", FakeServer(chunks=200), headers=headers)

    assert (server.status, server.read) == (413, 4)
    assert json.loads(server.text)["error"]["code"] == "request_too_large"
