"""Benchmark of big files becoming a job: a file over the API's limits validated whole and sent as several batches.

`python -m benchmarks.split [--megabytes 210] [--lines 300000]` (run by `make bench`) works in a scratch folder
(database, sandbox files), never in yours. It writes a JSONL file of about 210 MB and 300,000 lines (over both of the
Batch API's limits: 200 MB and 50,000 requests), starts the sandbox (the upstream API here) in one server process
and the dashboard in another, as in production, and posts the file to the dashboard's create (the JSON API's, with a
token: the same form, validation and split as the create page) streamed from disk over HTTP. It prints:
- the time from the first byte sent to the answer (the upload received, validated whole, split, and each part
  uploaded to the sandbox and created: two upstream calls a part);
- the dashboard process's peak resident memory (VmHWM) before and after, against the target of 150 MB: the upload
  streams to a temporary file, validation reads it line by line (custom_ids in a table of 64-bit digests), and each
  part is uploaded from its byte range in blocks;
- the parts the sandbox holds, and that their bytes are the file's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from benchmarks import common
from benchmarks.common import rerun_in_scratch

SCRATCH_ENV = "BATCHBOARD_BENCH_SPLIT_SCRATCH"
TARGET_MB = 150.0
CHAT = "/v1/chat/completions"
BLOCK = 1024 * 1024


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.split", description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=210, help="the file's size (default 210)")
    parser.add_argument("--lines", type=int, default=300_000, help="its requests (default 300,000)")
    args = parser.parse_args()
    if not os.environ.get(SCRATCH_ENV):
        return rerun_in_scratch("benchmarks.split", sys.argv[1:], SCRATCH_ENV)
    common.ready_django()
    return _run(Path(os.environ[SCRATCH_ENV]), args)


def _write_file(path: Path, megabytes: int, lines: int) -> tuple[int, str]:
    """`lines` requests of equal length making about `megabytes` MB; returns the size and the SHA-256."""
    line_bytes = max(megabytes * 1024 * 1024 // lines, 200)
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        for number in range(1, lines + 1):
            text = f"Summarise ticket {number}. "
            line = {"custom_id": f"q-{number:07d}", "method": "POST", "url": CHAT, "body": {"model": "gpt-4o-mini"}}
            line["body"]["messages"] = [{"role": "user", "content": text}]
            padding = max(line_bytes - len(json.dumps(line)) - 1, 0)
            line["body"]["messages"][0]["content"] = text + "x" * padding
            data = (json.dumps(line) + "\n").encode()
            handle.write(data)
            digest.update(data)
    return path.stat().st_size, digest.hexdigest()


class _Multipart:
    """A multipart/form-data body streamed from the file, with its length (the servers want a Content-Length)."""

    def __init__(self, path: Path):
        self.path = path
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        self.head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="input_file"; filename="big.jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        self.tail = f"\r\n--{boundary}--\r\n".encode()

    def __len__(self) -> int:
        return len(self.head) + self.path.stat().st_size + len(self.tail)

    def __iter__(self):
        yield self.head
        with self.path.open("rb") as handle:
            while block := handle.read(BLOCK):
                yield block
        yield self.tail


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(scratch: Path, name: str, environment: dict[str, str]) -> tuple[subprocess.Popen, str]:

    port = _free_port()
    log = open(scratch / f"{name}.log", "wb")  # noqa: SIM115 (the process's whole life)
    command = [sys.executable, "manage.py", "runserver", "--noreload", "--skip-checks", f"127.0.0.1:{port}"]
    server = subprocess.Popen(
        command, cwd=common.ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **environment}
    )
    base = f"http://127.0.0.1:{port}"
    common.wait_until_answering(f"{base}/healthz", f"the {name} server (see {scratch / name}.log)")
    return server, base


def _peak_mb(pid: int) -> tuple[float, float]:
    """(peak, current) resident memory of a process, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


def _run(scratch: Path, args) -> int:
    import requests
    from django.contrib.auth.models import User
    from django.utils import timezone

    from api.models import ApiToken

    path = scratch / "big.jsonl"
    started = time.perf_counter()
    size, digest = _write_file(path, args.megabytes, args.lines)
    print(f"wrote {size / 2**20:.0f} MiB, {args.lines:,} lines in {time.perf_counter() - started:.1f} s", flush=True)

    user = User.objects.create_superuser("bench", password=None)
    _token, secret = ApiToken.make(
        user, name="bench", scopes=["read", "create"], expires_at=timezone.now() + timezone.timedelta(days=1)
    )
    sandbox, sandbox_base = _start(scratch, "sandbox", {})
    dashboard = None
    try:
        sandbox_url = f"{sandbox_base}/sandbox/v1"
        dashboard, base = _start(scratch, "dashboard", {"SANDBOX_URL": sandbox_url, "SANDBOX_ENABLED": "false"})
        requests.get(f"{base}/healthz", timeout=10)
        before, _ = _peak_mb(dashboard.pid)
        body = _Multipart(path)
        headers = {
            "Authorization": f"Bearer {secret}",
            "Content-Type": body.content_type,
            "Idempotency-Key": "bench-split",
        }
        started = time.perf_counter()
        answer = requests.post(f"{base}/api/v1/batches", data=body, headers=headers, timeout=3600)
        elapsed = time.perf_counter() - started
        peak, current = _peak_mb(dashboard.pid)
        if answer.status_code != 201:
            print(f"the create answered {answer.status_code}: {answer.text[:1000]}", file=sys.stderr)
            return 1
        job = answer.json()["job"]
        sandbox_headers = {"Authorization": "Bearer sk-sandbox"}
        stored = hashlib.sha256()
        for batch_id in job["parts"]:
            batch = requests.get(f"{sandbox_url}/batches/{batch_id}", headers=sandbox_headers, timeout=60).json()
            content = f"{sandbox_url}/files/{batch['input_file_id']}/content"
            with requests.get(content, headers=sandbox_headers, stream=True, timeout=600) as response:
                for chunk in response.iter_content(BLOCK):
                    stored.update(chunk)
        same = stored.hexdigest() == digest
    finally:
        for server in (dashboard, sandbox):
            if server is not None:
                server.terminate()
                server.wait(timeout=30)

    table = common.Table(
        f"A {size / 2**20:.0f} MiB file of {args.lines:,} requests sent through the dashboard's create "
        f"({common.machine()})"
    )
    table.add("parts (batches of one job)", f"{job['part_count']}", "≥ 2", job["part_count"] >= 2)
    table.add("the parts' bytes are the file's", "yes" if same else "NO", "yes", same)
    table.add("time: upload, validate, split, send", f"{elapsed:.1f} s", "", None)
    table.add("dashboard peak RSS, before", f"{before:.0f} MiB", "", None)
    table.add("dashboard peak RSS, after", f"{peak:.0f} MiB", f"< {TARGET_MB:.0f} MiB", peak < TARGET_MB)
    table.add("dashboard RSS after the request", f"{current:.0f} MiB", "", None)
    table.print()
    return 0 if same and peak < TARGET_MB else 1


if __name__ == "__main__":
    sys.exit(main())
