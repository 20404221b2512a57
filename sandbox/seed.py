"""The demo organisation: three dozen batches in every status, with real input files, created on first use; the second
organisation's smaller demo set (ten batches of another business, so two connections look different), created on
its own first use; and a large organisation for benchmarks (seed_scale), bulk-inserted in seconds.

Seeded batches run in real time (speed 1), whatever SANDBOX_SPEED is: the history then has realistic durations
(hours of processing two weeks ago), and the handful of live batches keep moving for 20-60 minutes after start-up,
well inside their 24 h window. Their plans are built so each is in its intended status at seeding time.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from django.db import IntegrityError, connection, transaction

from sandbox import organisations, store
from sandbox.models import SandboxBatch, SandboxFile, SeedMarker
from sandbox.validation import scan_input

DEMO = "demo"
# The seed marker of each organisation's demo set.
DEMO_MARKERS = {organisations.FIRST: DEMO, organisations.SECOND: "demo-second"}
HOUR = 3600.0
DAY = 86_400.0
MINUTE = 60.0
CHAT, EMBEDDINGS, RESPONSES = "/v1/chat/completions", "/v1/embeddings", "/v1/responses"

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


def _input_file(lines: list[str], filename: str, created: float, organisation: str) -> SandboxFile:
    file_id = organisations.new_file_id(organisation)
    path = store.files_dir() / file_id
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return SandboxFile.objects.create(
        id=file_id,
        organisation=organisation,
        filename=filename,
        purpose="batch",
        bytes=path.stat().st_size,
        created_at=int(created),
        expires_at=int(created) + store.FILE_RETENTION_S,
    )


def _batch(
    now: float,
    *,
    organisation: str = organisations.FIRST,
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
    input_file = _input_file(lines, f"{slug}.jsonl", created - 90, organisation)
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


# Live: still validating, running, finalizing or cancelling for the next 20-60 minutes. All times in minutes:
# (description, endpoint, model, requests, age, validating, running, other plan settings).
LIVE = (
    ("Support backlog triage", CHAT, "gpt-4.1", 1200, 2, 25, 30, {}),
    ("Catalogue embeddings refresh", EMBEDDINGS, "text-embedding-3-small", 800, 0.5, 8, 40, {}),
    ("Hourly sentiment scoring", CHAT, "gpt-4o-mini", 300, 10, 3, 10 - 3 + 22, {}),  # 22 minutes of work left
    ("Eval: reading comprehension", RESPONSES, "gpt-5-mini", 150, 18, 4, 18 - 4 + 35, {}),
    ("Product description rewrite", CHAT, "gpt-4.1-mini", 2000, 27, 5, 27 - 5 + 48, {}),
    ("Search index embeddings", EMBEDDINGS, "text-embedding-3-large", 600, 41, 6, 41 - 6 + 55, {}),
    ("Reasoning eval sweep", RESPONSES, "o4-mini", 240, 50, 7, 50 - 7 + 26, {}),
    ("Weekly churn-risk summaries", CHAT, "gpt-4o", 400, 70, 5, 45, {"finalize": 40}),
    ("Duplicate run, cancelled by mistake", CHAT, "gpt-4o-mini", 500, 45, 4, 90, {"drain": 9, "cancel_after": 44}),
)
# History: completed over the past two weeks, one every 0.85 days or so (about 3% of requests fail, by hash).
COMPLETED = (
    ("Nightly eval job", CHAT, "gpt-4o-mini", 5),
    ("Ticket auto-tagging", CHAT, "gpt-4o-mini", 120),
    ("FAQ embeddings", EMBEDDINGS, "text-embedding-3-small", 400),
    ("Reading comprehension eval", RESPONSES, "gpt-4.1", 60),
    ("Release notes drafts", CHAT, "gpt-4.1", 250),
    ("Semantic search backfill", EMBEDDINGS, "text-embedding-3-large", 150),
    ("Policy QA eval", RESPONSES, "gpt-5", 40),
    ("Review summaries", CHAT, "gpt-4.1-mini", 300),
    ("Sales email variants", CHAT, "gpt-4o", 25),
    ("Math word problems eval", RESPONSES, "o4-mini", 80),
    ("Catalogue embeddings", EMBEDDINGS, "text-embedding-3-small", 1000),
    ("Smoke test", CHAT, "gpt-4o-mini", 12),
    ("Grader calibration", RESPONSES, "gpt-5-mini", 200),
    ("Intent classification", CHAT, "gpt-5-mini", 90),
    ("Glossary embeddings", EMBEDDINGS, "text-embedding-3-small", 30),
)
# Expired: the 24 h window closed with work left. (description, endpoint, model, requests, age in days, run hours)
EXPIRED = (
    ("Peak-hour backlog", CHAT, "gpt-4.1", 900, 2.5, 30),
    ("Large reasoning eval", RESPONSES, "gpt-5", 300, 7.8, 40),
    ("Image captions embeddings", EMBEDDINGS, "text-embedding-3-large", 1500, 12.4, 50),
)
# Cancelled part-way through a five-hour run. (description, endpoint, model, age in days)
CANCELLED = (
    ("Wrong prompt version", CHAT, "gpt-4o-mini", 0.6),
    ("Superseded eval", RESPONSES, "gpt-4.1", 5.2),
    ("Stale catalogue snapshot", EMBEDDINGS, "text-embedding-3-small", 10.7),
)


def seed_demo(now: float) -> list[SandboxBatch]:
    """Create the first organisation's demo batches relative to `now` (deterministic apart from ids)."""
    rng = random.Random(2026)
    made = []

    def add(description, endpoint, lines, **plan):
        metadata = {"description": description, "team": rng.choice(TEAMS), "owner": rng.choice(PEOPLE)}
        made.append(_batch(now, endpoint=endpoint, lines=lines, metadata=metadata, **plan))

    for index, (description, endpoint, model, count, age, validate, run, other) in enumerate(LIVE):
        minutes = {name: value * MINUTE for name, value in other.items()}
        lines = _lines(endpoint, model, count, f"live{index}")
        add(description, endpoint, lines, age=age * MINUTE, validate=validate * MINUTE, run=run * MINUTE, **minutes)

    for index, (description, endpoint, model, count) in enumerate(COMPLETED):
        add(
            description,
            endpoint,
            _lines(endpoint, model, count, f"c{index}"),
            age=(index + 1) * 0.85 * DAY + rng.uniform(0, 4 * HOUR),
            validate=rng.uniform(1, 8) * MINUTE,
            run=rng.uniform(0.5, 7) * HOUR,
            finalize=rng.uniform(3, 15) * MINUTE,
        )
    long_drafts = _lines(CHAT, "gpt-4o-mini", 20, "haiku", max_tokens=100_000)  # every request fails
    add(
        "Long-form drafts (max_tokens too high)", CHAT, long_drafts, age=4.2 * DAY, validate=2 * MINUTE, run=50 * MINUTE
    )

    # Failed validation, with line-numbered errors from the real files.
    good = _lines(CHAT, "gpt-4o-mini", 40, "row")
    broken = [*good[:6], good[6][:-9], *good[7:18], good[2], *good[19:]]  # cut short; a duplicate custom_id
    add("Hand-edited eval set", CHAT, broken, age=1.3 * DAY, validate=40, run=HOUR)
    wrong_method = [line.replace('"POST"', '"GET"') if i == 3 else line for i, line in enumerate(good[:25])]
    wrong_method[11] = json.dumps({k: v for k, v in json.loads(good[11]).items() if k != "url"})
    add("Exported from CRM", CHAT, wrong_method, age=3.6 * DAY, validate=75, run=HOUR)
    mixed = _lines(EMBEDDINGS, "text-embedding-3-small", 30, "doc")
    mixed[8] = json.dumps(_request(CHAT, "gpt-4o-mini", "doc-9", 9))
    mixed[14] = json.dumps(_request(EMBEDDINGS, "text-embedding-3-large", "doc-15", 15))
    add("Mixed models by mistake", EMBEDDINGS, mixed, age=6.5 * DAY, validate=55, run=HOUR)
    bulk = _lines(CHAT, "gpt-4.1", 2000, "bulk")
    add("Full archive re-labelling", CHAT, bulk, age=9.1 * DAY, validate=3 * MINUTE, run=HOUR, scenario="token_limit")

    for index, (description, endpoint, model, count, days, hours) in enumerate(EXPIRED):
        lines = _lines(endpoint, model, count, f"x{index}")
        add(description, endpoint, lines, age=days * DAY, validate=6 * MINUTE, run=hours * HOUR)

    for index, (description, endpoint, model, days) in enumerate(CANCELLED):
        add(
            description,
            endpoint,
            _lines(endpoint, model, 200, f"k{index}"),
            age=days * DAY,
            validate=4 * MINUTE,
            run=5 * HOUR,
            drain=rng.uniform(2, 9) * MINUTE,
            cancel_after=4 * MINUTE + rng.uniform(0.2, 0.7) * 5 * HOUR,
        )
    early = _lines(CHAT, "gpt-4o-mini", 50, "early")
    add(
        "Started against the wrong file",  # cancelled while still validating
        CHAT,
        early,
        age=13.2 * DAY,
        validate=10 * MINUTE,
        run=HOUR,
        drain=2 * MINUTE,
        cancel_after=3 * MINUTE,
    )
    return made


# The second organisation: a finance and legal team, ten batches. Live as LIVE, completed as COMPLETED.
SECOND_LIVE = (
    ("Contract clause extraction", CHAT, "gpt-4.1-mini", 400, 3, 5, 35),  # still validating
    ("Invoice line-item embeddings", EMBEDDINGS, "text-embedding-3-small", 900, 12, 4, 12 - 4 + 30),
    ("Compliance Q&A eval", RESPONSES, "gpt-5-mini", 120, 20, 3, 20 - 3 + 25),
)
SECOND_COMPLETED = (
    ("Quarterly filings summaries", CHAT, "gpt-4.1", 80),
    ("Vendor name normalisation", CHAT, "gpt-4o-mini", 300),
    ("Policy document embeddings", EMBEDDINGS, "text-embedding-3-large", 250),
    ("Audit sampling eval", RESPONSES, "o4-mini", 60),
    ("Expense category tagging", CHAT, "gpt-4o-mini", 150),
)
SECOND_PEOPLE = ("noor", "felix", "ines")
SECOND_TEAMS = ("legal", "finance", "compliance")


def seed_second_demo(now: float) -> list[SandboxBatch]:
    """Create the second organisation's demo batches relative to `now`: running, completed, failed and cancelled."""
    rng = random.Random(2027)
    made = []

    def add(description, endpoint, lines, **plan):
        metadata = {"description": description, "team": rng.choice(SECOND_TEAMS), "owner": rng.choice(SECOND_PEOPLE)}
        made.append(
            _batch(now, organisation=organisations.SECOND, endpoint=endpoint, lines=lines, metadata=metadata, **plan)
        )

    for index, (description, endpoint, model, count, age, validate, run) in enumerate(SECOND_LIVE):
        lines = _lines(endpoint, model, count, f"ops{index}")
        add(description, endpoint, lines, age=age * MINUTE, validate=validate * MINUTE, run=run * MINUTE)
    for index, (description, endpoint, model, count) in enumerate(SECOND_COMPLETED):
        add(
            description,
            endpoint,
            _lines(endpoint, model, count, f"fin{index}"),
            age=(index + 1) * 1.7 * DAY + rng.uniform(0, 4 * HOUR),
            validate=rng.uniform(1, 8) * MINUTE,
            run=rng.uniform(0.5, 5) * HOUR,
            finalize=rng.uniform(3, 15) * MINUTE,
        )
    glossary = _lines(CHAT, "gpt-4o-mini", 30, "term")
    glossary[4] = glossary[4][:-7]  # cut short: the batch fails validation on line 5
    add("Translated glossary import", CHAT, glossary, age=2.2 * DAY, validate=50, run=HOUR)
    add(
        "Duplicate filings run",
        CHAT,
        _lines(CHAT, "gpt-4.1", 200, "dup"),
        age=4.4 * DAY,
        validate=4 * MINUTE,
        run=5 * HOUR,
        drain=5 * MINUTE,
        cancel_after=90 * MINUTE,
    )
    return made


DEMOS = {organisations.FIRST: seed_demo, organisations.SECOND: seed_second_demo}


# seed_scale: batches per bulk insert, and the lines of the one input file every scaled batch shares.
SCALE_CHUNK = 5000
SCALE_LINES = 20


def seed_scale(
    batches: int,
    running: int,
    now: float,
    *,
    days: float = 30.0,
    seed: int = 7,
    organisation: str = organisations.FIRST,
) -> dict[str, int]:
    """Add `batches` batches created over the last `days` days, the newest `running` of them still running for hours.

    For benchmarks at scale (100,000 batches in seconds): rows are bulk-inserted, all batches share one input file
    and the finished ones one output file, written once, so listing them never writes result files. The running
    batches were created over the last 12 hours and run in real time for another 12 or more; the others finished
    long ago: mostly completed, some cancelled part-way and some failed validation. Returns the count per kind.
    """
    if not 0 <= running <= batches:
        raise ValueError("running must be between 0 and the number of batches")
    rng = random.Random(seed)
    created_first = now - days * DAY
    lines = _lines(CHAT, "gpt-4o-mini", SCALE_LINES, "scale")
    input_file = _input_file(lines, "scale-input.jsonl", created_first - HOUR, organisation)
    scan = scan_input(input_file.path, CHAT)
    output_file = _input_file(
        lines, "scale-output.jsonl", created_first, organisation
    )  # any bytes: nobody reads them here
    SandboxFile.objects.filter(pk=output_file.pk).update(purpose="batch_output")
    counts = {"running": 0, "completed": 0, "cancelled": 0, "failed": 0}
    finished = batches - running
    with transaction.atomic():  # One commit: on SQLite, a commit per chunk costs more than the inserts.
        _insert_scaled(batches, running, finished, now, days, created_first, input_file, output_file, scan, rng, counts)
    return counts


def _insert_scaled(batches, running, finished, now, days, created_first, input_file, output_file, scan, rng, counts):
    for start in range(0, batches, SCALE_CHUNK):
        rows = []
        for index in range(start, min(start + SCALE_CHUNK, batches)):
            if index < finished:  # oldest first, evenly over the span, ending 12 hours before now
                created = created_first + (days * DAY - 12 * HOUR) * index / max(finished, 1)
                kind = rng.choices(("completed", "cancelled", "failed"), weights=(90, 6, 4))[0]
            else:
                created = now - 12 * HOUR + 12 * HOUR * (index - finished + 1) / (running + 1)
                kind = "running"
            counts[kind] += 1
            rows.append(_scaled_batch(created, kind, input_file, output_file, scan, now, rng))
        _insert_rows(rows)


def _insert_rows(rows: list[SandboxBatch]) -> None:
    """One executemany of plain values: Django's bulk_create spends ~1 ms a row compiling SQL, 100 s at 100,000."""
    fields = SandboxBatch._meta.concrete_fields
    table = connection.ops.quote_name(SandboxBatch._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    values = [
        tuple(field.get_db_prep_save(getattr(row, field.attname), connection) for field in fields) for row in rows
    ]
    with connection.cursor() as cursor:
        cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({placeholders})", values)  # noqa: S608


def _scaled_batch(created, kind, input_file, output_file, scan, now, rng) -> SandboxBatch:
    running = kind == "running"
    # A running batch's run ends 12-20 hours after now; a finished one ran for up to three hours.
    run = (now - created) + rng.uniform(12, 20) * HOUR if running else rng.uniform(0.2, 3) * HOUR
    batch = SandboxBatch(
        id=organisations.new_batch_id(input_file.organisation, created),
        organisation=input_file.organisation,
        endpoint=CHAT,
        input_file_id=input_file.id,
        metadata={"description": f"scaled {kind} batch", "team": rng.choice(TEAMS)},
        created=created,
        created_at=int(created),
        speed=1.0,
        validate_s=rng.uniform(30, 300),
        run_s=run,
        finalize_s=rng.uniform(60, 600),
        drain_s=rng.uniform(60, 300),
        total=scan.total,
        model=scan.model or "",
        checkpoints=scan.checkpoints,
        results_ready=not running,
        output_file_id="" if running else output_file.id,
    )
    if kind == "failed":
        batch.total, batch.checkpoints = 0, []
        batch.errors = [{"code": "invalid_json_line", "message": "Line 3 is not valid JSON.", "param": None, "line": 3}]
        batch.output_file_id = ""
    elif kind == "cancelled":
        batch.cancel_requested = created + batch.validate_s + batch.run_s / 2
    return batch


def ensure_seeded(organisation: str = organisations.FIRST) -> bool:
    """Seed the organisation's demo set unless it ever was; safe when several requests race (the marker is unique)."""
    marker = DEMO_MARKERS[organisation]
    if SeedMarker.objects.filter(name=marker).exists():
        return False
    try:
        with transaction.atomic():
            SeedMarker.objects.create(name=marker)
            DEMOS[organisation](time.time())
    except IntegrityError:
        return False
    return True


def reset() -> None:
    """Forget every sandbox batch and file (and the seed markers); only the sandbox's own files are removed."""
    SandboxBatch.objects.all().delete()
    SandboxFile.objects.all().delete()
    SeedMarker.objects.all().delete()
    directory = Path(store.files_dir())
    for pattern in ("file-*", f"{organisations.GATEWAY_FILE_ID_PREFIX}*", ".upload-*", ".output-*", ".errors-*"):
        for path in directory.glob(pattern):
            path.unlink(missing_ok=True)
