"""batchboard's command-line client: submit a JSONL file, follow, cancel and retry batches, and stream results, over
batchboard's JSON API (/api/v1/). One module, no dependency beyond `requests`: copy it anywhere.

    export BATCHBOARD_URL=https://batchboard.example.com BATCHBOARD_TOKEN=bb_...
    python -m batchboard_client submit requests.jsonl --description "nightly eval" --wait
    python -m batchboard_client status batch_abc
    python -m batchboard_client results batch_abc --failed --csv > failed.csv
    python -m batchboard_client retry batch_abc --failed
    python -m batchboard_client cancel batch_abc

Batches are printed as JSON on stdout, progress and errors on stderr. Exit codes: 0 done, 1 the API refused or
failed (its message is printed), 2 a usage or configuration problem, 3 batchboard could not be reached; with
--wait, 4 when the batch ended other than completed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid

import requests

API_PREFIX = "/api/v1"
TIMEOUT = (10, 300)  # (connect, read): a create uploads the file and waits for the OpenAI API's answer
TERMINAL = ("completed", "failed", "expired", "cancelled")
RETRY_CHOICES = ("failed", "unanswered", "unrun", "missing", "transient")
# A request that may not have reached batchboard is sent again this many times; a create keeps its Idempotency-Key,
# so it never makes two batches.
ATTEMPTS = 4
MAX_POLL_SECONDS = 60.0
CHUNK_BYTES = 64 * 1024
SHOWN_LINE_PROBLEMS = 20

OK, API_ERROR, USAGE, UNREACHABLE, NOT_COMPLETED = 0, 1, 2, 3, 4


class ClientError(Exception):
    """A failure to report in one message, then exit with `code`."""

    def __init__(self, message: str, code: int = API_ERROR):
        super().__init__(message)
        self.message = message
        self.code = code


class Client:
    def __init__(self, url: str, token: str, *, session: requests.Session | None = None):
        self.base = url.rstrip("/") + API_PREFIX
        self.session = session or requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {token}", "User-Agent": "batchboard-client/1"})

    def request(self, method: str, path: str, *, stream: bool = False, **kwargs) -> requests.Response:
        """One call, sent again (after a pause) when batchboard could not be reached or answered 429/502/503; an
        answer of 400 or more is raised as a ClientError with the API's own message."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = self.session.request(method, self.base + path, timeout=TIMEOUT, stream=stream, **kwargs)
            except requests.RequestException as exc:
                if attempt == ATTEMPTS:
                    raise ClientError(f"Cannot reach batchboard at {self.base}: {exc}", UNREACHABLE) from None
                _pause(attempt, None)
                continue
            if response.status_code in (429, 502, 503) and attempt < ATTEMPTS:
                _pause(attempt, response.headers.get("Retry-After"))
                continue
            if response.status_code >= 400:
                raise ClientError(_error_message(response))
            return response
        raise AssertionError("unreachable")  # the loop returns or raises

    def json(self, method: str, path: str, **kwargs) -> dict:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"batchboard answered {path} with something that is not JSON.") from None

    def submit(self, path: str, *, connection: str, description: str, endpoint: str, metadata: dict) -> dict:
        fields = {"endpoint": endpoint or _endpoint_of(path)}
        if connection:
            fields["connection"] = connection
        if description:
            fields["description"] = description
        if metadata:
            fields["metadata"] = json.dumps(metadata)
        key = str(uuid.uuid4())  # one per submit: sending it again after a lost answer cannot make a second batch
        try:
            handle = open(path, "rb")  # noqa: SIM115 (closed below, after every attempt)
        except OSError as exc:
            raise ClientError(f"Cannot read {path}: {exc.strerror}.", USAGE) from None
        with handle:
            files = {"input_file": (os.path.basename(path), handle, "application/jsonl")}
            return self.json("POST", "/batches", data=fields, files=files, headers={"Idempotency-Key": key})

    def batch(self, batch_id: str) -> dict:
        return self.json("GET", f"/batches/{_quoted(batch_id)}")

    def cancel(self, batch_id: str) -> dict:
        return self.json("POST", f"/batches/{_quoted(batch_id)}/cancel")["batch"]

    def retry(self, batch_id: str, select: str) -> dict:
        key = str(uuid.uuid4())
        return self.json(
            "POST", f"/batches/{_quoted(batch_id)}/retry", json={"select": select}, headers={"Idempotency-Key": key}
        )

    def results(self, batch_id: str, *, failed: bool, fmt: str, out) -> None:
        """The job's final results (each line's answer from any batch of the job), streamed to `out`."""
        params = {"show": "failing" if failed else "all"}
        path = f"/batches/{_quoted(batch_id)}/final/export.{fmt}"
        with self.request("GET", path, params=params, stream=True) as response:
            for chunk in response.iter_content(CHUNK_BYTES):
                out.write(chunk)
        out.flush()

    def wait(self, batch_id: str, *, interval: float, say) -> dict:
        """Poll until the batch is final: every `interval` seconds at first, backing off to MAX_POLL_SECONDS."""
        last = ""
        while True:
            batch = self.batch(batch_id)
            counts = batch["request_counts"]
            state = (
                f"{batch['status']} ({counts['completed']} completed, {counts['failed']} failed of {counts['total']})"
            )
            if state != last:
                say(f"{batch_id}: {state}")
                last = state
            if batch["status"] in TERMINAL:
                return batch
            time.sleep(interval * random.uniform(0.8, 1.2))
            interval = min(interval * 1.5, MAX_POLL_SECONDS)


def _quoted(batch_id: str) -> str:
    return requests.utils.quote(batch_id, safe="")


def _pause(attempt: int, retry_after: str | None) -> None:
    try:
        seconds = min(float(retry_after), MAX_POLL_SECONDS) if retry_after else 0.5 * 2**attempt
    except ValueError:
        seconds = 0.5 * 2**attempt
    time.sleep(seconds * random.uniform(0.8, 1.2))


def _error_message(response: requests.Response) -> str:
    """The API's message (with the problems it lists by line), else the bare status."""
    try:
        error = response.json()["error"]
        message = str(error["message"])
    except (ValueError, KeyError, TypeError):
        return f"batchboard answered HTTP {response.status_code} {response.reason}."
    details = error.get("details")
    lines = details.get("lines") if isinstance(details, dict) else None
    if lines:
        shown = [f"  line {problem['line']}: {problem['message']}" for problem in lines[:SHOWN_LINE_PROBLEMS]]
        total = details.get("line_error_count") or len(lines)
        if total > len(shown):
            shown.append(f"  … and {total - len(shown)} more")
        message += "\n" + "\n".join(shown)
    return f"{message} (HTTP {response.status_code})"


def _endpoint_of(path: str) -> str:
    """The endpoint the file's first request names (every line of a batch has the same), for --endpoint's default."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(1024 * 1024)
        url = json.loads(first).get("url", "")
    except (OSError, ValueError, AttributeError):
        url = ""
    return url if isinstance(url, str) and url else "/v1/chat/completions"


def _metadata(pairs: list[str]) -> dict:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ClientError(f"--metadata takes KEY=VALUE, not {pair!r}.", USAGE)
        metadata[key] = value
    return metadata


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m batchboard_client",
        description="Drive batchboard's JSON API. Set BATCHBOARD_URL and BATCHBOARD_TOKEN (a personal access token "
        "made on batchboard's API tokens page).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    submit = commands.add_parser("submit", help="create a batch from a JSONL file, validated as the create page does")
    submit.add_argument("file")
    submit.add_argument("--connection", default="", metavar="SLUG", help="the connection to create it on")
    submit.add_argument("--description", default="")
    submit.add_argument("--endpoint", default="", help="default: the url of the file's first line")
    submit.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--wait", action="store_true", help="poll until the batch is final")
    submit.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="the first pause of --wait")
    status = commands.add_parser("status", help="a batch, as JSON")
    status.add_argument("batch_id", metavar="ID")
    status.add_argument("--wait", action="store_true", help="poll until the batch is final")
    status.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="the first pause of --wait")
    cancel = commands.add_parser("cancel", help="cancel a batch")
    cancel.add_argument("batch_id", metavar="ID")
    results = commands.add_parser("results", help="stream the job's final results (JSONL, or CSV) to stdout")
    results.add_argument("batch_id", metavar="ID")
    results.add_argument("--failed", action="store_true", help="only the lines still without an answer")
    results.add_argument("--csv", action="store_true", help="CSV instead of JSONL")
    retry = commands.add_parser("retry", help="send lines of a finished batch again, as a retry in its job")
    retry.add_argument("batch_id", metavar="ID")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--failed", dest="select", action="store_const", const="failed", help="every failed line")
    which.add_argument("--select", choices=RETRY_CHOICES, help="another of the retry page's choices")
    return parser


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False), flush=True)


def _finished(client: Client, batch: dict, args) -> int:
    if not args.wait:
        _print_json(batch)
        return OK
    batch = client.wait(batch["id"], interval=max(args.interval, 0.05), say=_say)
    _print_json(batch)
    return OK if batch["status"] == "completed" else NOT_COMPLETED


def run(argv: list[str] | None = None, environ=None) -> int:
    args = _parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    url, token = environ.get("BATCHBOARD_URL", "").strip(), environ.get("BATCHBOARD_TOKEN", "").strip()
    if not url or not token:
        missing = " and ".join(
            name for name, value in (("BATCHBOARD_URL", url), ("BATCHBOARD_TOKEN", token)) if not value
        )
        _say(
            f"Set {missing}: the address of batchboard (e.g. https://batchboard.example.com) and a personal access "
            "token made on its API tokens page."
        )
        return USAGE
    client = Client(url, token)
    try:
        if args.command == "submit":
            answer = client.submit(
                args.file,
                connection=args.connection,
                description=args.description,
                endpoint=args.endpoint,
                metadata=_metadata(args.metadata),
            )
            _say(f"Created {answer['batch']['id']}" + (" (already, by this submit)" if answer["repeated"] else ""))
            return _finished(client, answer["batch"], args)
        if args.command == "status":
            return _finished(client, client.batch(args.batch_id), args)
        if args.command == "cancel":
            _print_json(client.cancel(args.batch_id))
            return OK
        if args.command == "results":
            client.results(args.batch_id, failed=args.failed, fmt="csv" if args.csv else "jsonl", out=sys.stdout.buffer)
            return OK
        if args.command == "retry":
            answer = client.retry(args.batch_id, args.select)
            _say(f"Created {answer['batch']['id']}: a retry of {answer['lines']} lines ({answer['selection']})")
            _print_json(answer["batch"])
            return OK
    except ClientError as exc:
        _say(f"Error: {exc.message}")
        return exc.code
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unknown command {args.command}")  # argparse allows only the commands above


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
