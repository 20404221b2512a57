"""A hostile upstream for the fuzz tests and benchmarks.hostile: a fake Batch API (on tests.fake_api.FakeApi) whose list
pages, Batch objects and result files are drawn from a seeded generator, within the spec and beyond it (issue 18).

Beyond the spec means: huge, negative and non-finite numbers, numbers that are strings, long strings, NUL and other
control characters, lone surrogates, unknown statuses, metadata that is not an object or whose keys are `items`,
`keys` and `values`, deep nesting, ids that are not ids; result lines with NUL, a raw "\\r", invalid UTF-8 or JSON,
duplicate and missing custom_ids, long lines; file contents that redirect. Large files are generated as they are
sent (FakeApi's `stream` replies), never held.
"""

from __future__ import annotations

import copy
import json
import random
import threading
from collections.abc import Callable, Iterator

from tests.fake_api import FakeApi, Reply, example

API_STATUSES = ("validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled")
TERMINAL = ("completed", "failed", "expired", "cancelled")
HOSTILE_WORDS = ("items", "keys", "values", "__class__", "get", "update", "pop", "0", "")
CONTROL = "".join(chr(code) for code in range(32)) + "\x7f"
MB = 1024 * 1024
NOW = 1_760_000_000


def _odd_text(rng: random.Random, longest: int = 5000) -> str:
    kind = rng.randrange(7)
    if kind == 0:
        return "x" * rng.choice((21, 28, 65, 129, 200, 513, longest))
    if kind == 1:
        return "a\x00b" * rng.randrange(1, 5)
    if kind == 2:
        return "".join(rng.choice(CONTROL) for _ in range(rng.randrange(1, 30)))
    if kind == 3:
        return "\ud800 lone surrogate"
    if kind == 4:
        return "<script>alert(1)</script>{{ x }}{% if %}"
    if kind == 5:
        return rng.choice(HOSTILE_WORDS)
    return "=cmd|' /C calc'!A0\r\n" + "é" * rng.randrange(100)


def _odd_number(rng: random.Random):
    numbers = (2**63, 2**64, -(2**63) - 1, 10**30, -1, -(10**9), 1e308, -1e308, float("inf"), float("nan"), 0.5)
    return rng.choice((*numbers, "10", None, [1]))


def _nested(depth: int):
    value: object = "bottom"
    for _ in range(depth):
        value = {"d": value}
    return value


def _odd_metadata(rng: random.Random):
    kind = rng.randrange(6)
    if kind == 0:
        return {word: _odd_text(rng, 600) for word in rng.sample(HOSTILE_WORDS, 4)}
    if kind == 1:
        return rng.choice((["items"], "items", 7, True, None))
    if kind == 2:
        return {f"k{n}": f"v{n}" for n in range(rng.choice((17, 65, 1000)))}
    if kind == 3:
        return {"k\x00": "v\x00", "description": "d\x00\r\n", "x" * 300: "y" * 3000}
    if kind == 4:
        return {"nested": {"items": [1, 2]}, "number": 2**70, "none": None}
    return {"items": "a", "keys": "b", "values": "c", "description": "items keys values"}


def normal_batch(rng: random.Random, number: int, created_at: int) -> dict:
    """A Batch object as the spec describes it."""
    status = rng.choice(API_STATUSES)
    data = copy.deepcopy(example(f"batch.{status}.json"))
    data["id"] = f"batch_fuzz{number:07d}"
    data["created_at"] = created_at
    data["expires_at"] = created_at + 86_400
    for field in ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at"):
        if data.get(field):
            data[field] = created_at + 5
    data["metadata"] = {"description": f"normal batch {number}", "team": rng.choice(("a", "b"))}
    return data


def hostile_batch(rng: random.Random, number: int, created_at: int) -> dict:
    """A Batch object with one to four fields beyond the spec; its id stays a valid id (see `invalid_id_batch`)."""
    data = normal_batch(rng, number, created_at)
    data["id"] = f"batch_odd{number:07d}"
    mutations: list[Callable[[dict], None]] = [
        lambda d: d.update(status=rng.choice(("Waiting_For_Capacity_Region1", "paused", "", None, 12, "x" * 500))),
        lambda d: d.update(status=rng.choice(API_STATUSES).upper()),
        lambda d: d.update(model=rng.choice((_odd_text(rng), {"items": 1}, 5))),
        lambda d: d.update(endpoint=rng.choice(("/v1/" + "e" * 96, "/v1/chat\x00", _odd_text(rng)))),
        lambda d: d.update(metadata=_odd_metadata(rng)),
        lambda d: d.update(usage={"input_tokens": _odd_number(rng), "output_tokens": _odd_number(rng)}),
        lambda d: d.update(usage=rng.choice(("lots", [1], {"input_tokens_details": "x", "total_tokens": 2**80}))),
        lambda d: d.update(request_counts={"total": _odd_number(rng), "completed": _odd_number(rng), "failed": -5}),
        lambda d: d.update(request_counts=rng.choice((None, "x", [1, 2]))),
        lambda d: d.update(created_at=rng.choice((2**63, -5, 1e20, "yesterday", None))),
        lambda d: d.update(errors={"data": [{"code": "items", "message": _odd_text(rng), "line": -1}]}),
        lambda d: d.update(errors=rng.choice(("broken", [1], {"data": "x"}))),
        lambda d: d.update(output_file_id=rng.choice(("file-../../admin", "x" * 300, 5, "file-ok\x00"))),
        lambda d: d.update(x_future_field=rng.choice((_nested(60), "z" * 200_000, {"a\x00": ["\x00", 2**90]}))),
        lambda d: d.update(completion_window=_odd_text(rng)),
    ]
    for mutate in rng.sample(mutations, rng.randrange(1, 5)):
        mutate(data)
    return data


def invalid_id_batch(rng: random.Random, number: int, created_at: int) -> dict:
    """A Batch object whose id is not an id: left out of its page (logged), never recorded."""
    data = normal_batch(rng, number, created_at)
    data["id"] = rng.choice(("../../admin", "batch_" + "x" * 200, "batch_a\x00b", 12345, None, "batch_ sp"))
    return data


class HostileApi:
    """A list of batches, newest first, half of them hostile, served page by page; `normal_ids` are those a sync must
    record, `listed_ids` every valid id listed."""

    def __init__(self, server: FakeApi, seed: int):
        self.server = server
        self.rng = random.Random(seed)
        self.batches: list[dict] = []
        self.normal_ids: list[str] = []
        self.hostile_ids: list[str] = []
        self._lock = threading.Lock()
        self._number = 0
        server.route("GET", "/batches", self._list)

    def add(self, count: int, *, hostile_share: float = 0.5, invalid_share: float = 0.03) -> None:
        """`count` batches newer than those already listed."""
        top = self.batches[0]["created_at"] if self.batches and isinstance(self.batches[0]["created_at"], int) else NOW
        created = max(top, NOW) + count
        new = []
        for _ in range(count):
            self._number += 1
            created -= 1
            draw = self.rng.random()
            if draw < invalid_share:
                new.append(invalid_id_batch(self.rng, self._number, created))
            elif draw < invalid_share + hostile_share:
                batch = hostile_batch(self.rng, self._number, created)
                self.hostile_ids.append(batch["id"])
                new.append(batch)
            else:
                batch = normal_batch(self.rng, self._number, created)
                self.normal_ids.append(batch["id"])
                new.append(batch)
        with self._lock:
            self.batches[:0] = new
        for batch in new:
            if isinstance(batch["id"], str) and batch["id"].isascii() and batch["id"].isidentifier():
                self.server.route("GET", f"/batches/{batch['id']}", self._retrieve)

    def move_on(self, share: float = 0.3) -> None:
        """Some batches change state (to exercise the changed path): counts grow, a few finish or turn odd."""
        with self._lock:
            for batch in self.batches:
                if self.rng.random() >= share or not isinstance(batch.get("request_counts"), dict):
                    continue
                counts = batch["request_counts"]
                if isinstance(counts.get("completed"), int) and counts["completed"] < 2**31:
                    counts["completed"] += 1
                if batch["id"] in self.hostile_ids and self.rng.random() < 0.3:
                    batch["status"] = _odd_text(self.rng, 40)

    def by_id(self, batch_id: str) -> dict:
        return next(batch for batch in self.batches if batch["id"] == batch_id)

    def _retrieve(self, received) -> Reply:
        batch_id = received.path.removeprefix("/batches/")
        with self._lock:
            return Reply(body=json.dumps(self.by_id(batch_id)).encode())

    def _list(self, received) -> Reply:
        limit = int(received.query.get("limit", ["20"])[0])
        after = received.query.get("after", [None])[0]
        with self._lock:
            batches = list(self.batches)
        if after:
            ids = [batch["id"] for batch in batches]
            batches = batches[ids.index(after) + 1 :] if after in ids else []
        page = batches[:limit]
        # json.dumps writes NaN and Infinity as the API never would, and "\ud800" as a lone surrogate escape.
        body = json.dumps({"object": "list", "data": page, "has_more": len(batches) > limit}).encode()
        return Reply(body=body)


# --- Result files -------------------------------------------------------------------------


def result_record(custom_id: str, text: str = "fine", status: int = 200, **extra) -> dict:
    body = (
        {
            "object": "chat.completion",
            "choices": [{"message": {"content": text}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        }
        if status < 400
        else {"error": {"message": text, "type": "invalid_request_error", "code": extra.pop("code", "bad_thing")}}
    )
    return {
        "id": "batch_req_x",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": "req_1", "body": body},
        "error": None,
        **extra,
    }


def input_record(custom_id: str) -> dict:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hello {custom_id}"}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def hostile_result_files(rng: random.Random, lines: int, *, long_line_bytes: int = 0) -> tuple[bytes, bytes, bytes]:
    """(input, output, error) files of about `lines` lines, a fifth of their lines hostile; with `long_line_bytes`,
    one answer that long (beyond the 10 MB line cap when it is more)."""
    ids = [f"req-{n}" for n in range(lines)]
    inputs, output, error = [], [], []
    for n, custom_id in enumerate(ids):
        odd = rng.random() < 0.2
        if odd and rng.random() < 0.3:
            custom_id = rng.choice(("nul\x00id", "items", "../../../../admin/", "a\rb", "é" * 600, "\ud800"))
        inputs.append(json.dumps(input_record(custom_id)).encode())
        draw = rng.random()
        if draw < 0.05:
            continue  # missing
        if not odd:
            record = result_record(custom_id, f"answer {n}", 200 if draw < 0.7 else 429)
            (output if draw < 0.7 else error).append(json.dumps(record).encode())
            continue
        kind = rng.randrange(12)
        if kind == 0:
            error.append(json.dumps(result_record(custom_id, _odd_text(rng), 400, code="items")).encode())
        elif kind == 1:
            output.append(json.dumps(result_record(custom_id, "a\x00b\r\nc")).encode())
        elif kind == 2:
            output.append(json.dumps(result_record(custom_id, "raw\rcarriage")).encode().replace(b"\\r", b"\r"))
        elif kind == 3:
            output.append(b'{"custom_id": "broken", "response": ')
        elif kind == 4:
            output.append(b"\xff\xfe not utf-8 \x00")
        elif kind == 5:
            record = result_record(custom_id)
            record["response"]["body"]["usage"] = {"prompt_tokens": 2**70, "completion_tokens": -4}
            record["response"]["status_code"] = rng.choice((2**40, -1, "200", None, 99))
            output.append(json.dumps(record).encode())
        elif kind == 6:
            output.append(json.dumps(result_record(custom_id, "first")).encode())
            output.append(json.dumps(result_record(custom_id, "second, a duplicate")).encode())
        elif kind == 7:
            output.append(json.dumps(result_record(f"not-in-input-{n}\x00")).encode())
        elif kind == 8:
            record = result_record(custom_id, _odd_text(rng), 500, code=_odd_text(rng, 100))
            error.append(json.dumps(record).encode())
        elif kind == 9:
            output.append(json.dumps({"custom_id": custom_id, "response": _nested(200)}).encode())
        elif kind == 10:
            record = {"custom_id": custom_id, "error": {"code": "batch_expired", "message": "m\x00"}}
            error.append(json.dumps(record).encode())
        else:
            output.append(json.dumps(result_record(custom_id, "ok", 200, extra_big=2**99, nan=float("nan"))).encode())
    if long_line_bytes:
        output.append(json.dumps(result_record(ids[0], "x" * long_line_bytes)).encode())
    join = b"\n".join
    return join(inputs) + b"\n", join(output) + b"\n", join(error) + (b"\n" if error else b"")


def serve_file(server: FakeApi, file_id: str, content: bytes | None = None, *, stream=None, length=0) -> None:
    """The Files API's retrieve and content for one file: bytes, or a generated stream of `length` bytes (None: an
    answer that announces no length)."""
    size = len(content) if content is not None else length or 0
    info = {"id": file_id, "object": "file", "bytes": size, "created_at": 1, "filename": f"{file_id}.jsonl"}
    info["purpose"] = "batch_output"
    server.script("GET", f"/files/{file_id}", Reply(body=info))
    if content is not None:
        server.script("GET", f"/files/{file_id}/content", Reply(body=content))
    else:
        server.script("GET", f"/files/{file_id}/content", Reply(stream=stream, length=length))


def serve_redirected_file(server: FakeApi, file_id: str, target: str) -> None:
    """A file whose content answers 302 to `target` (a path of the same server): what a hostile proxy may do."""
    info = {"id": file_id, "object": "file", "bytes": 10, "created_at": 1, "filename": "x.jsonl", "purpose": "batch"}
    server.script("GET", f"/files/{file_id}", Reply(body=info))
    server.script("GET", f"/files/{file_id}/content", Reply(302, b"", headers={"Location": target}))
    server.script("GET", target.removeprefix("/v1"), Reply(body=b"<html>not a file</html>\n"))


# --- Large files, generated as they are sent ------------------------------------------------


def peak_mb() -> float:
    """This process's peak resident memory in MB (VmHWM). Not getrusage's ru_maxrss: Linux carries the high-water
    mark of the process image an exec replaced into it, so a child of a large pytest process would report the
    parent's size."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("No VmHWM in /proc/self/status.")


def long_answer(custom_id: str, size: int) -> tuple[Callable[[], Iterator[bytes]], int]:
    """One result line whose answer is `size` bytes of text, and nothing else: (chunks factory, length)."""
    head = json.dumps(result_record(custom_id, "@@")).encode().split(b"@@")
    length = len(head[0]) + size + len(head[1]) + 1

    def chunks() -> Iterator[bytes]:
        yield head[0]
        block = b"x" * MB
        remaining = size
        while remaining:
            piece = block[: min(MB, remaining)]
            remaining -= len(piece)
            yield piece
        yield head[1] + b"\n"

    return chunks, length


def _fixed_lines(count: int, line: Callable[[int], bytes]) -> tuple[Callable[[], Iterator[bytes]], int]:
    """`count` lines of one length each (line(n) must give the same length for every n), in 1 MB chunks."""
    each = len(line(0)) + 1

    def chunks() -> Iterator[bytes]:
        buffer = bytearray()
        for n in range(count):
            buffer += line(n) + b"\n"
            if len(buffer) >= MB:
                yield bytes(buffer)
                buffer.clear()
        if buffer:
            yield bytes(buffer)

    return chunks, each * count


def many_error_lines(count: int, message_bytes: int = 1200) -> tuple[Callable[[], Iterator[bytes]], int]:
    """An error file of `count` lines, every message different in words (so no two group together)."""
    words = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")

    def line(n: int) -> bytes:
        unique = "-".join(words[int(digit)] for digit in f"{n:07d}")
        message = (unique + " ").ljust(message_bytes, "z")
        record = result_record(f"req-{n:07d}", message, 400, code="invalid_value")
        return json.dumps(record).encode()

    return _fixed_lines(count, line)


def many_input_lines(count: int) -> tuple[Callable[[], Iterator[bytes]], int]:
    return _fixed_lines(count, lambda n: json.dumps(input_record(f"req-{n:07d}")).encode())


def big_lines(count: int, line_bytes: int) -> tuple[Callable[[], Iterator[bytes]], int]:
    """An output file of `count` answers of `line_bytes` each (custom_ids req-00, req-01, ...)."""
    head, tail = json.dumps(result_record("req-@@", "%%")).encode().split(b"%%")
    length = count * (len(head) + line_bytes + len(tail) + 1)  # "@@" is replaced by 2 digits

    def chunks() -> Iterator[bytes]:
        block = b"y" * MB
        for number in range(count):
            yield head.replace(b"@@", f"{number % 100:02d}".encode())
            remaining = line_bytes
            while remaining:
                piece = block[: min(MB, remaining)]
                remaining -= len(piece)
                yield piece
            yield tail + b"\n"

    return chunks, length


GENERATED = {
    "long": long_answer,
    "errors": many_error_lines,
    "inputs": many_input_lines,
    "big": big_lines,
}


def serve(spec: dict) -> None:
    """Serve, until stdin closes, the generated files of `spec` ({file id: [kind, *arguments]} with a kind of
    GENERATED) and, with "list": [seed, count], a HostileApi list (with GET /expected, the normal batches' statuses,
    and POST /move_on). Prints the API's URL first. A process of its own, so that a measured process holds only the
    dashboard's memory."""
    import sys

    server = FakeApi().start()
    for file_id, (kind, *arguments) in spec.items():
        if file_id == "list":
            continue
        chunks, length = GENERATED[kind](*arguments)
        serve_file(server, file_id, stream=chunks, length=length)
    if "list" in spec:
        seed, count = spec["list"]
        hostile = HostileApi(server, seed=seed)
        hostile.add(count)

        def expected(received) -> Reply:
            normal = {batch_id: hostile.by_id(batch_id)["status"] for batch_id in hostile.normal_ids}
            return Reply(body={"normal": normal, "listed": len(hostile.normal_ids) + len(hostile.hostile_ids)})

        def move_on(received) -> Reply:
            hostile.move_on()
            return Reply(body={})

        server.route("GET", "/expected", expected)
        server.route("POST", "/move_on", move_on)
    print(server.url, flush=True)
    sys.stdin.read()
    server.stop()


class Served:
    """`python -m tests.hostile_api SPEC` as a context manager: its URL, and the process stopped on exit."""

    def __init__(self, spec: dict):
        self.spec = spec

    def __enter__(self) -> str:
        import subprocess
        import sys

        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.hostile_api", json.dumps(self.spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        return self.process.stdout.readline().strip()

    def __exit__(self, *exc_info) -> None:
        self.process.communicate("", timeout=60)


if __name__ == "__main__":
    import sys

    serve(json.loads(sys.argv[1]))
