"""A scriptable local HTTP server for the service tests: canned replies, scripted failures, a log of every request."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.reference import EXAMPLES

BODY_KEPT = 256 * 1024  # Bigger bodies are counted and hashed, not kept, so a large upload costs no memory here.
READ_BLOCK = 64 * 1024


def example(name: str) -> Any:
    return json.loads((EXAMPLES / name).read_text())


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200
    body: Any = b""  # bytes are sent as they are; anything else as JSON
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # wait this long before answering (to trigger read timeouts)
    drop: bool = False  # close the connection without answering
    truncate_at: int | None = None  # announce the whole body but send only this many bytes, then close
    # A body generated as it is sent, never held: a callable returning the chunks, and their total length (None: no
    # Content-Length, the end of the body is the end of the connection).
    stream: Any = None
    length: int | None = 0

    @classmethod
    def example(cls, name: str, status: int = 200, **kwargs) -> Reply:
        return cls(status=status, body=example(name), **kwargs)

    def payload(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


@dataclass(frozen=True)
class Received:
    """What the server got: headers are keyed in lower case; `body` is kept up to BODY_KEPT bytes."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    body_size: int
    body_sha256: str

    def json(self) -> Any:
        return json.loads(self.body)


class FakeApi:
    """Serves scripted replies per (method, path) on 127.0.0.1 at a free port.

    `script(method, path, *replies)` answers successive requests with successive replies (the last one repeats);
    `route(method, path, handler)` answers with handler(Received) -> Reply. Unscripted paths get a 404 error.
    """

    def __init__(self, port: int = 0):
        self.received: list[Received] = []
        self._routes: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01})

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, method: str, path: str, *replies: Reply) -> None:
        self._routes[(method, path)] = list(replies)

    def route(self, method: str, path: str, handler) -> None:
        self._routes[(method, path)] = handler

    def requests_to(self, method: str, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.method == method and r.path == path]

    def requests_arrived(self, method: str, path: str, *, within: float = 5.0) -> list[Received]:
        """The requests to a path, once at least one has been read in full: a client that timed out can give up
        before the server has finished reading what it sent."""
        deadline = time.monotonic() + within
        while not (received := self.requests_to(method, path)) and time.monotonic() < deadline:
            time.sleep(0.01)
        return received

    def start(self) -> FakeApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> FakeApi:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _reply_for(self, received: Received) -> Reply:
        with self._lock:
            self.received.append(received)
            route = self._routes.get((received.method, received.path))
            if route is None:
                return Reply(404, {"error": {"message": f"No route {received.path}", "type": "invalid_request_error"}})
            if callable(route):
                handler = route
            else:
                return route.pop(0) if len(route) > 1 else route[0]
        return handler(received)


def _handler_for(api: FakeApi):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real API does
        disable_nagle_algorithm = True  # headers and body go out as separate writes; do not wait for an ACK between

        def do_GET(self):
            self._serve()

        def do_POST(self):
            self._serve()

        def do_DELETE(self):
            self._serve()

        def log_message(self, *args):
            pass  # Quiet: the test output is for the tests.

        def _read_body(self) -> tuple[bytes, int, str]:
            kept, size, digest = bytearray(), 0, hashlib.sha256()
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                blocks = self._chunked_blocks()
            else:
                blocks = self._sized_blocks(int(self.headers.get("Content-Length") or 0))
            for block in blocks:
                size += len(block)
                digest.update(block)
                if len(kept) < BODY_KEPT:
                    kept += block[: BODY_KEPT - len(kept)]
            return bytes(kept), size, digest.hexdigest()

        def _sized_blocks(self, remaining: int):
            while remaining:
                block = self.rfile.read(min(READ_BLOCK, remaining))
                if not block:
                    return
                remaining -= len(block)
                yield block

        def _chunked_blocks(self):
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return
                yield from self._sized_blocks(size)
                self.rfile.readline()

        def _serve(self):
            url = urlsplit(self.path)
            body, size, digest = self._read_body()
            received = Received(
                method=self.command,
                path=url.path.removeprefix("/v1"),
                query=parse_qs(url.query),
                headers={name.lower(): value for name, value in self.headers.items()},
                body=body,
                body_size=size,
                body_sha256=digest,
            )
            reply = api._reply_for(received)
            if reply.delay:
                time.sleep(reply.delay)
            if reply.drop:
                self.close_connection = True
                return
            if reply.stream is not None:
                self._send_stream(reply)
                return
            payload = reply.payload()
            self.send_response(reply.status)
            headers = {"Content-Type": "application/json", **reply.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            if reply.truncate_at is not None:
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload[: reply.truncate_at])
                self.wfile.flush()
                self.close_connection = True
                return
            self.end_headers()
            self.wfile.write(payload)

        def _send_stream(self, reply: Reply):
            self.send_response(reply.status)
            for name, value in {"Content-Type": "application/octet-stream", **reply.headers}.items():
                self.send_header(name, value)
            if reply.length is None:
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(reply.length))
            self.end_headers()
            for chunk in reply.stream():
                self.wfile.write(chunk)

        def handle(self):
            # The client may give up first (a timeout under test): there is nobody left to answer.
            with contextlib.suppress(ConnectionError, TimeoutError):
                super().handle()

    return Handler
