"""The demo organisation: three dozen batches in every status, with real input files, created on first use.

Seeded batches run in real time (speed 1), whatever SANDBOX_SPEED is: the history then has realistic durations
(hours of processing two weeks ago), and the handful of live batches keep moving for 20-60 minutes after start-up,
well inside their 24 h window. Their plans are built so each is in its intended status at seeding time.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from django.db import IntegrityError, transaction

from sandbox import store
from sandbox.models import SandboxBatch, SandboxFile, SeedMarker

DEMO = "demo"
HOUR = 3600.0
DAY = 86_400.0
MINUTE = 60.0

TICKETS = (
    "My invoice shows a charge twice this month.",
    "The app crashes when I upload a photo from my phone.",
    "How do I change the email address on my account?",
    "Delivery was late and the box was damaged.",
    "Can I get a refund for an unused annual plan?",
    "The password reset link in your email has expired.",
    "Please add dark mode to the dashboard.",
    "I was charged in the wrong currency.",
)
PRODUCTS = (
    "Stainless steel water bottle, 750 ml, keeps drinks cold for 24 hours",
    "Wireless noise-cancelling headphones with 30-hour battery",
    "Organic green tea, 100 bags, first flush",
    "Ergonomic office chair with lumbar support",
    "Cast iron skillet, 26 cm, pre-seasoned",
    "Trail running shoes, waterproof, size 42",
)
QUESTIONS = (
    "Summarise the key risks in this quarterly report in three bullet points.",
    "Is the following statement supported by the passage? Answer yes or no.",
    "Extract the company names mentioned in the article.",
    "Rewrite this paragraph for a ten-year-old reader.",
    "Which of the four answers is correct? Explain briefly.",
)
PEOPLE = ("maria", "jonas", "aiko", "dev", "lena", "tomas")
TEAMS = ("support", "search", "research", "growth", "platform")


def _request(endpoint: str, model: str, custom_id: str, index: int, **extra) -> dict:
    if endpoint == "/v1/embeddings":
        body = {"model": model, "input": PRODUCTS[index % len(PRODUCTS)]}
    elif endpoint == "/v1/responses":
        body = {"model": model, "input": QUESTIONS[index % len(QUESTIONS)], "max_output_tokens": 512}
    else:
        body = {
            "model": model,
            "messages": [
                {"role": "system", "content": "Classify the support ticket and draft a one-line reply."},
                {"role": "user", "content": TICKETS[index % len(TICKETS)]},
            ],
            "max_tokens": 256,
        }
    body.update(extra)
    return {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body}


def _lines(endpoint: str, model: str, count: int, prefix: str, **extra) -> list[str]:
    return [json.dumps(_request(endpoint, model, f"{prefix}-{i}", i, **extra)) for i in range(1, count + 1)]


def _input_file(lines: list[str], filename: str, created: float) -> SandboxFile:
    file_id = store.new_file_id()
    path = store.files_dir() / file_id
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return SandboxFile.objects.create(
        id=file_id,
        filename=filename,
        purpose="batch",
        bytes=path.stat().st_size,
        created_at=int(created),
        expires_at=int(created) + store.FILE_RETENTION_S,
    )


def _batch(
    now: float,
    *,
    age: float,
    endpoint: str,
    lines: list[str],
    metadata: dict,
    validate: float,
    run: float,
    finalize: float = 10 * MINUTE,
    drain: float = 5 * MINUTE,
    cancel_after: float | None = None,
    scenario: str = "",
) -> SandboxBatch:
    created = now - age
    slug = metadata["description"].lower().replace(" ", "_")[:40]
    input_file = _input_file(lines, f"{slug}.jsonl", created - 90)
    batch = store.create_batch(
        input_file=input_file,
        endpoint=endpoint,
        metadata=metadata,
        output_expires_after=None,
        now=created,
        speed=1.0,
        durations={"validate_s": validate, "run_s": run, "finalize_s": finalize, "drain_s": drain},
        scenario=scenario,
    )
    if cancel_after is not None:
        batch.cancel_requested = created + cancel_after
        batch.save(update_fields=["cancel_requested"])
    return batch


def seed_demo(now: float) -> list[SandboxBatch]:
    """Create the demo batches relative to `now` (deterministic apart from ids)."""
    rng = random.Random(2026)
    chat, embeddings, responses = "/v1/chat/completions", "/v1/embeddings", "/v1/responses"
    made = []

    def meta(description, **extra):
        return {"description": description, "team": rng.choice(TEAMS), "owner": rng.choice(PEOPLE), **extra}

    def add(**kwargs):
        made.append(_batch(now, **kwargs))

    # Live: still validating, running, finalizing or cancelling for the next 20-60 minutes.
    add(
        age=2 * MINUTE,
        endpoint=chat,
        lines=_lines(chat, "gpt-4.1", 1200, "ticket"),
        metadata=meta("Support backlog triage", env="prod"),
        validate=25 * MINUTE,
        run=30 * MINUTE,
    )
    add(
        age=30,
        endpoint=embeddings,
        lines=_lines(embeddings, "text-embedding-3-small", 800, "sku"),
        metadata=meta("Catalogue embeddings refresh"),
        validate=8 * MINUTE,
        run=40 * MINUTE,
    )
    for index, (age, remaining) in enumerate(((10, 22), (18, 35), (27, 48), (41, 55), (50, 26))):
        endpoint, model = [
            (chat, "gpt-4o-mini"),
            (responses, "gpt-5-mini"),
            (chat, "gpt-4.1-mini"),
            (embeddings, "text-embedding-3-large"),
            (responses, "o4-mini"),
        ][index]
        count = (300, 150, 2000, 600, 240)[index]
        validate = (3 + index) * MINUTE
        add(
            age=age * MINUTE,
            endpoint=endpoint,
            lines=_lines(endpoint, model, count, f"req{index}"),
            metadata=meta(
                [
                    "Hourly sentiment scoring",
                    "Eval: reading comprehension",
                    "Product description rewrite",
                    "Search index embeddings",
                    "Reasoning eval sweep",
                ][index],
                env="prod",
            ),
            validate=validate,
            run=age * MINUTE - validate + remaining * MINUTE,
        )
    add(
        age=70 * MINUTE,
        endpoint=chat,
        lines=_lines(chat, "gpt-4o", 400, "ticket"),
        metadata=meta("Weekly churn-risk summaries"),
        validate=5 * MINUTE,
        run=45 * MINUTE,
        finalize=40 * MINUTE,
    )
    add(
        age=45 * MINUTE,
        endpoint=chat,
        lines=_lines(chat, "gpt-4o-mini", 500, "ticket"),
        metadata=meta("Duplicate run, cancelled by mistake"),
        validate=4 * MINUTE,
        run=90 * MINUTE,
        drain=9 * MINUTE,
        cancel_after=44 * MINUTE,
    )

    # History: completed over the past two weeks, a few with failed requests (about 3% fail by hash).
    completed = [
        (chat, "gpt-4o-mini", 5),
        (chat, "gpt-4o-mini", 120),
        (embeddings, "text-embedding-3-small", 400),
        (responses, "gpt-4.1", 60),
        (chat, "gpt-4.1", 250),
        (embeddings, "text-embedding-3-large", 150),
        (responses, "gpt-5", 40),
        (chat, "gpt-4.1-mini", 300),
        (chat, "gpt-4o", 25),
        (responses, "o4-mini", 80),
        (embeddings, "text-embedding-3-small", 1000),
        (chat, "gpt-4o-mini", 12),
        (responses, "gpt-5-mini", 200),
        (chat, "gpt-5-mini", 90),
        (embeddings, "text-embedding-3-small", 30),
    ]
    descriptions = (
        "Nightly eval job",
        "Ticket auto-tagging",
        "FAQ embeddings",
        "Reading comprehension eval",
        "Release notes drafts",
        "Semantic search backfill",
        "Policy QA eval",
        "Review summaries",
        "Sales email variants",
        "Math word problems eval",
        "Catalogue embeddings",
        "Smoke test",
        "Grader calibration",
        "Intent classification",
        "Glossary embeddings",
    )
    for index, ((endpoint, model, count), description) in enumerate(zip(completed, descriptions, strict=True)):
        add(
            age=(index + 1) * 0.85 * DAY + rng.uniform(0, 4 * HOUR),
            endpoint=endpoint,
            lines=_lines(endpoint, model, count, f"c{index}"),
            metadata=meta(description),
            validate=rng.uniform(1, 8) * MINUTE,
            run=rng.uniform(0.5, 7) * HOUR,
            finalize=rng.uniform(3, 15) * MINUTE,
        )
    add(
        age=4.2 * DAY,
        endpoint=chat,
        lines=_lines(chat, "gpt-4o-mini", 20, "haiku", max_tokens=100_000),
        metadata=meta("Long-form drafts (max_tokens too high)"),
        validate=2 * MINUTE,
        run=50 * MINUTE,
    )

    # Failed validation, with line-numbered errors from the real files below.
    good = _lines(chat, "gpt-4o-mini", 40, "row")
    broken = [*good[:6], good[6][:-9], *good[7:18], good[2], *good[19:]]
    add(
        age=1.3 * DAY,
        endpoint=chat,
        lines=broken,
        metadata=meta("Hand-edited eval set"),
        validate=40,
        run=HOUR,
    )
    wrong_method = [line.replace('"POST"', '"GET"') if i == 3 else line for i, line in enumerate(good[:25])]
    wrong_method[11] = json.dumps({k: v for k, v in json.loads(good[11]).items() if k != "url"})
    add(
        age=3.6 * DAY,
        endpoint=chat,
        lines=wrong_method,
        metadata=meta("Exported from CRM"),
        validate=75,
        run=HOUR,
    )
    mixed = _lines(embeddings, "text-embedding-3-small", 30, "doc")
    mixed[8] = json.dumps(_request(chat, "gpt-4o-mini", "doc-9", 9))
    mixed[14] = json.dumps(_request(embeddings, "text-embedding-3-large", "doc-15", 15))
    add(
        age=6.5 * DAY,
        endpoint=embeddings,
        lines=mixed,
        metadata=meta("Mixed models by mistake"),
        validate=55,
        run=HOUR,
    )
    add(
        age=9.1 * DAY,
        endpoint=chat,
        lines=_lines(chat, "gpt-4.1", 2000, "bulk"),
        metadata=meta("Full archive re-labelling"),
        validate=3 * MINUTE,
        run=HOUR,
        scenario="token_limit",
    )

    # Expired: the 24 h window closed with work left.
    for index, (age, count) in enumerate(((2.5, 900), (7.8, 300), (12.4, 1500))):
        endpoint, model = [(chat, "gpt-4.1"), (responses, "gpt-5"), (embeddings, "text-embedding-3-large")][index]
        add(
            age=age * DAY,
            endpoint=endpoint,
            lines=_lines(endpoint, model, count, f"x{index}"),
            metadata=meta(["Peak-hour backlog", "Large reasoning eval", "Image captions embeddings"][index]),
            validate=6 * MINUTE,
            run=(30 + 10 * index) * HOUR,
        )

    # Cancelled: three part-way through the run, one while still validating.
    for index, age in enumerate((0.6, 5.2, 10.7)):
        endpoint, model = [(chat, "gpt-4o-mini"), (responses, "gpt-4.1"), (embeddings, "text-embedding-3-small")][index]
        add(
            age=age * DAY,
            endpoint=endpoint,
            lines=_lines(endpoint, model, 200, f"k{index}"),
            metadata=meta(["Wrong prompt version", "Superseded eval", "Stale catalogue snapshot"][index]),
            validate=4 * MINUTE,
            run=5 * HOUR,
            drain=rng.uniform(2, 9) * MINUTE,
            cancel_after=4 * MINUTE + rng.uniform(0.2, 0.7) * 5 * HOUR,
        )
    add(
        age=13.2 * DAY,
        endpoint=chat,
        lines=_lines(chat, "gpt-4o-mini", 50, "early"),
        metadata=meta("Started against the wrong file"),
        validate=10 * MINUTE,
        run=HOUR,
        drain=2 * MINUTE,
        cancel_after=3 * MINUTE,
    )
    return made


def ensure_seeded() -> bool:
    """Seed the demo organisation unless it ever was; safe when several requests race (the marker is unique)."""
    if SeedMarker.objects.filter(name=DEMO).exists():
        return False
    try:
        with transaction.atomic():
            SeedMarker.objects.create(name=DEMO)
            seed_demo(time.time())
    except IntegrityError:
        return False
    return True


def reset() -> None:
    """Forget every sandbox batch and file (and the seed marker); only the sandbox's own files are removed."""
    SandboxBatch.objects.all().delete()
    SandboxFile.objects.all().delete()
    SeedMarker.objects.all().delete()
    directory = Path(store.files_dir())
    for pattern in ("file-*", ".upload-*", ".output-*", ".errors-*"):
        for path in directory.glob(pattern):
            path.unlink(missing_ok=True)
