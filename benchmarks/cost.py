"""Cost benchmarks: estimating a 50,000-line, 100 MB input as the create page does (validation and counting in one
streaming pass), and the summary strip's spending aggregate over 100,000 batches.

Runs in a scratch SQLite database and temporary folder, never yours: `python -m benchmarks.cost` (`make bench`).
The tokenizer files cannot be downloaded here, so the tiktoken run uses a synthetic vocabulary of about 60,000
tokens with o200k_base's split pattern: it measures tiktoken's splitting and merging on this much text, which is
what costs time, not OpenAI's exact vocabulary.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from benchmarks import common

LINES = 50_000
TARGET_BYTES = 100 * 1024 * 1024
ESTIMATE_TARGET_SECONDS = 20.0
SPENDING_BATCHES = 100_000
SPENDING_TARGET_MS = 5.0
WORDS = 6_000
SEED = 13


def main() -> None:
    scratch = Path(tempfile.mkdtemp(prefix="batchboard-bench-cost-"))
    os.environ["DATABASE_URL"] = f"sqlite:///{scratch / 'bench.sqlite3'}"
    for name in ("OPENAI_API_KEY", "BATCHBOARD_PRICES", "TIKTOKEN_CACHE_DIR"):
        os.environ.pop(name, None)
    common.ready_django()
    load = ", ".join(f"{figure:.1f}" for figure in os.getloadavg())
    print(f"Cost benchmarks (Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load})")
    bench_estimate(scratch)
    bench_spending()
    shutil.rmtree(scratch, ignore_errors=True)


# --- The estimate -------------------------------------------------------------


def _words(rng: random.Random) -> list[str]:
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    weights = [12, 9, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    return ["".join(rng.choices(letters, weights, k=rng.randint(2, 9))) for _ in range(WORDS)]


def _write_input(path: Path, words: list[str], rng: random.Random) -> int:
    """A chat-completions input of LINES lines adding up to about TARGET_BYTES: English-like prose per line."""
    line_text = TARGET_BYTES // LINES - 260  # the JSON around the prompt takes the rest of each line
    with path.open("w") as handle:
        for number in range(LINES):
            text = []
            length = 0
            while length < line_text:
                word = rng.choice(words)
                text.append(word)
                length += len(word) + 1
            body = {
                "model": "gpt-4o-mini",
                "max_tokens": 400,
                "messages": [
                    {"role": "system", "content": "You are a careful assistant. Answer in one paragraph."},
                    {"role": "user", "content": " ".join(text) + "."},
                ],
            }
            request = {"custom_id": f"request-{number}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            handle.write(json.dumps(request) + "\n")
    return path.stat().st_size


def _write_vocabulary(directory: Path, words: list[str]) -> None:
    """A tiktoken file for o200k_base: every byte, then every prefix of every word, alone and after a space."""
    from batches.estimate import ENCODING_URLS, encoding_file

    tokens = [bytes([b]) for b in range(256)]
    seen = set(tokens)
    for word in words:
        for form in (word, " " + word):
            for end in range(2, len(form) + 1):
                token = form[:end].encode()
                if token not in seen:
                    seen.add(token)
                    tokens.append(token)
    name = hashlib.sha1(ENCODING_URLS["o200k_base"].encode()).hexdigest()  # noqa: S324 - tiktoken's file naming
    text = "".join(f"{base64.b64encode(token).decode()} {rank}\n" for rank, token in enumerate(tokens))
    (directory / name).write_text(text)
    assert encoding_file("o200k_base", directory) is not None
    print(f"  synthetic o200k_base vocabulary: {len(tokens):,} tokens")


def _estimate(path: Path, size: int):
    from batches.estimate import InputCounter
    from batches.forms import validate_jsonl

    counter = InputCounter()
    started, cpu_started = time.perf_counter(), time.process_time()
    with path.open("rb") as handle:
        report = validate_jsonl(handle, size=size, observe=counter.add)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    assert report.is_valid, report.messages[:3]
    return seconds, cpu, counter.result()


def _validate_only(path: Path, size: int) -> tuple[float, float]:
    from batches.forms import validate_jsonl

    started, cpu_started = time.perf_counter(), time.process_time()
    with path.open("rb") as handle:
        validate_jsonl(handle, size=size)
    return time.perf_counter() - started, time.process_time() - cpu_started


def bench_estimate(scratch: Path) -> None:
    from django.test import override_settings

    from batches.estimate import load_encoding
    from batches.pricing import format_money

    rng = random.Random(SEED)
    words = _words(rng)
    path = scratch / "input.jsonl"
    size = _write_input(path, words, rng)
    print(f"\nEstimating a {LINES:,}-line, {size / 1024 / 1024:.0f} MB input (validation and counting in one pass):")
    tokenizer_dir = scratch / "tiktoken"
    tokenizer_dir.mkdir()
    _write_vocabulary(tokenizer_dir, words)
    rss_before = _max_rss_mb()
    rows = [("validation alone (no estimate)", *_validate_only(path, size), None)]
    with override_settings(TIKTOKEN_CACHE_DIR=""):
        rows.append(("estimate from character counts", *_estimate(path, size)))
    with override_settings(TIKTOKEN_CACHE_DIR=str(tokenizer_dir)):
        started = time.perf_counter()
        load_encoding("o200k_base")
        load_seconds = time.perf_counter() - started
        rows.append(("estimate with tiktoken (o200k_base split)", *_estimate(path, size)))
    print(f"  loading the vocabulary file once per process: {load_seconds:.2f} s")
    print(f"  {'path':44}{'seconds':>9}{'cpu':>8}{'input tokens':>14}{'about':>8}{'at most':>9}  target")
    for label, seconds, cpu, result in rows:
        if result is None:
            print(f"  {label:44}{seconds:9.2f}{cpu:8.2f}{'':>14}{'':>8}{'':>9}  (for comparison)")
            continue
        verdict = "ok" if seconds <= ESTIMATE_TARGET_SECONDS else "MISSED"
        print(
            f"  {label:44}{seconds:9.2f}{cpu:8.2f}{result.input_tokens:14,}{format_money(result.input_cost):>8}"
            f"{format_money(result.max_cost):>9}  ≤ {ESTIMATE_TARGET_SECONDS:g} s: {verdict}"
        )
    growth = _max_rss_mb() - rss_before
    print(f"  peak memory grew by {growth:.0f} MB over these runs (the vocabulary; lines are read one at a time)")


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- The summary strip's spending --------------------------------------------


def bench_spending() -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from batches.models import Batch, DailySpend
    from batches.spending import figures

    rng = random.Random(SEED)
    now = timezone.now()
    models = ("gpt-4o-mini-2024-07-18", "gpt-4.1-2025-04-14", "o4-mini-2025-04-16", "text-embedding-3-small", "acme")
    rows = []
    for number in range(SPENDING_BATCHES):
        running = rng.random() < 0.01  # 1,000 running
        created = now - timedelta(seconds=rng.randint(60, 90 * 86_400))
        tokens = rng.randint(10_000, 5_000_000)
        rows.append(
            Batch(
                batch_id=f"batch_cost{number:06d}",
                status="in_progress" if running else "completed",
                is_terminal=not running,
                endpoint="/v1/chat/completions",
                model=rng.choice(models),
                created_at=created,
                finished_at=None if running else created + timedelta(minutes=rng.randint(5, 600)),
                total_requests=1000,
                completed_requests=1000,
                payload={"id": f"batch_cost{number:06d}"},
                payload_hash="x",
                input_tokens=tokens,
                cached_input_tokens=tokens // 5,
                output_tokens=tokens // 4,
            )
        )
    Batch.objects.bulk_create(rows, batch_size=5000)
    del rows
    DailySpend.rebuild()  # Rows written in bulk skip record_batch, which keeps the daily totals.
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    today = timezone.localdate()
    month_count = Batch.objects.filter(is_terminal=True, finished_at__date__gte=today.replace(day=1)).count()
    times, cpu_times = [], []
    for _ in range(21):
        with CaptureQueriesContext(connection) as queries:
            started, cpu_started = time.perf_counter(), time.process_time()
            spending = figures(today=today)
            times.append((time.perf_counter() - started) * 1000)
            cpu_times.append((time.process_time() - cpu_started) * 1000)
    median = statistics.median(times)
    verdict = "ok" if median <= SPENDING_TARGET_MS else "MISSED"
    print(f"\nSummary strip spending over {SPENDING_BATCHES:,} batches ({month_count:,} finished this month):")
    print(
        f"  median {median:.1f} ms (cpu {statistics.median(cpu_times):.1f} ms), {len(queries)} queries; "
        f"this month {spending.month.amount.quantize(1):,} USD, "
        f"{spending.unpriced_batches:,} unpriced batches left out  ≤ {SPENDING_TARGET_MS:g} ms: {verdict}"
    )


if __name__ == "__main__":
    main()
