"""Results kept locally: fetch a final batch's files once, index every line, read lines back, evict and prune.

Cost model. Fetching runs as the keep_results reaction (results.tasks), one task per batch on the task workers, so a
100 MB file never delays the list: per batch, three file lookups and three downloads (input, output, error), each
streamed to a temporary file and from there to the results storage, never held in memory, and refused past
BATCHBOARD_RESULT_FILE_MAX_MB; indexing reads the local copies line by line (a line over MAX_LINE_BYTES is kept as
"too long to keep", never read whole) and joins answers to the input in a temporary SQLite file, so memory stays flat
whatever the files hold (benchmarks.hostile: about 80 MB of process RSS for 300,000 lines or a 100 MB line). Pages
never call the API: they read the index and seek into the stored files, and a request page shows at most 256 KB of a
line (the raw line is streamed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.core.files import File
from django.core.files.storage import storages
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from batches import normalise, reactions, services
from batches.formatting import format_size
from batches.forms import MAX_LINE_BYTES
from batches.freshness import failure_message
from batches.models import Batch, Reaction
from results import answers, events
from results.models import (
    MESSAGE_LENGTH,
    PREVIEW_LENGTH,
    UNRUN_CODES,
    ArchiveState,
    Outcome,
    ResultArchive,
    ResultLine,
)

logger = logging.getLogger("batches.results")

MODE_NEW = "new"
MODE_ALL = "all"
MODE_ON_OPEN = "on-open"
MODE_OFF = "off"
# The reactions that fetch and index a batch's files, and that ask whether the API still has them once its results
# page is opened (registered by ResultsConfig.ready()).
KEEP_STEP = "keep_results"
CHECK_STEP = "check_results_upstream"
# A page's visit is noted on its archive at most this often (one small write), however often it is opened.
OPENED_NOTE_SECONDS = 60
UNREADABLE_KEPT = 200
GROUPS_KEPT = 50
INSERT_CHUNK = 2000
CHECK_UPSTREAM_EVERY = timedelta(days=1)
FILE_KINDS = ("input", "output", "error")
_NUMBERS = re.compile(r"\d+")
# A hostile or broken file must not grow memory with its size: a line longer than MAX_LINE_BYTES (as the create form
# allows) is never read whole, only its head (HEAD_BYTES) for its custom_id and status; at most MAX_GROUPS error
# groups and codes are told apart (the rest are counted together); the join of answers to the input spills to a
# temporary SQLite file instead of a dict of every answer.
HEAD_BYTES = 64 * 1024
MAX_GROUPS = 1000
STREAM_CHUNK = 64 * 1024
TOO_LONG = "too long to keep"
_HEAD_CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*("(?:[^"\\]|\\.){0,2048}")')
_HEAD_STATUS = re.compile(rb'"status_code"\s*:\s*(\d{3})\b')


class ResultFileTooLarge(Exception):
    """A result file is larger than BATCHBOARD_RESULT_FILE_MAX_MB: it is not kept."""


def max_file_bytes() -> int:
    return settings.BATCHBOARD_RESULT_FILE_MAX_MB * 1024 * 1024


def storable_id(custom_id: str) -> str:
    """A custom_id as the index stores it and a lookup by custom_id finds it: its first 512 characters, NUL (which
    PostgreSQL refuses) made U+FFFD so that the id stays distinct and findable."""
    return normalise.text(custom_id[:512].replace("\x00", "\ufffd"), 512)


def results_storage():
    return storages["results"]


def wants_archive(batch: Batch) -> bool:
    """A batch has something to keep once it is final and has an output or error file."""
    return batch.is_terminal and bool(batch.output_file_id or batch.error_file_id)


def keeps_by_itself(batch: Batch) -> bool:
    """Whether the background work will keep this final batch's results though it has no archive yet, without anyone
    opening them: a page showing the batch waits for them. With "all", any final batch with files; with "new", the
    archive is asked for when the batch is recorded final, so a batch without one is history, kept only on open."""
    return batch.connection.archive_mode == MODE_ALL and wants_archive(batch)


def keeps_when_final(historical: bool, mode: str | None = None) -> bool:
    """Whether the archive mode (the batch's connection's, else BATCHBOARD_ARCHIVE) keeps a batch's files as soon as
    it is final: "all" does; "new" only for batches that became final after the install (not the history
    import's)."""
    mode = mode or settings.BATCHBOARD_ARCHIVE
    return mode == MODE_ALL or (mode == MODE_NEW and not historical)


def keep(batch: Batch, *, wanted: bool = False) -> ResultArchive:
    """Ask for a final batch's files to be kept: its archive row and the keep_results reaction that fills it, in one
    transaction (once: a second call finds the row)."""
    now = timezone.now()
    try:
        with transaction.atomic():
            archive = ResultArchive.objects.create(batch=batch, wanted=wanted, last_opened_at=now if wanted else None)
            reactions.schedule(KEEP_STEP, batch.pk, priority=reactions.HURRY_PRIORITY if wanted else 0)
            return archive
    except IntegrityError:  # another viewer, or the batch becoming final, asked at the same moment
        return ResultArchive.objects.get(batch=batch)


def request_archive(batch: Batch, *, wanted: bool = True) -> ResultArchive | None:
    """The batch's archive, asked for now if it has none and is final (the results page's "first open", in every
    mode but "off"); `wanted` notes the visit and puts a pending fetch ahead of the queue."""
    archive = ResultArchive.objects.filter(batch=batch).first()
    if archive is None:
        if not wanted or batch.connection.archive_mode == MODE_OFF or not wants_archive(batch):
            return None
        return keep(batch, wanted=True)
    if wanted:
        _note_opened(archive)
        _check_when_due(archive)
        if archive.is_pending and not archive.wanted:
            ResultArchive.objects.filter(pk=archive.pk).update(wanted=True)
            archive.wanted = True
            if not reactions.hurry(KEEP_STEP, batch.pk):  # asked for before reactions: schedule (once, it is unique)
                reactions.schedule(KEEP_STEP, batch.pk, priority=reactions.HURRY_PRIORITY)
    return archive


def _note_opened(archive: ResultArchive) -> None:
    now = timezone.now()
    if archive.last_opened_at is not None and archive.last_opened_at > now - timedelta(seconds=OPENED_NOTE_SECONDS):
        return
    stale = Q(last_opened_at__isnull=True) | Q(last_opened_at__lte=now - timedelta(seconds=OPENED_NOTE_SECONDS))
    ResultArchive.objects.filter(stale, pk=archive.pk).update(last_opened_at=now)
    archive.last_opened_at = now


def keep_for_reaction(reaction: Reaction, client: services.BatchClient | None = None) -> None:
    """The keep_results reaction's body: fetch and index the batch's files unless they are kept already."""
    archive = ResultArchive.objects.select_related("batch").filter(batch_id=reaction.batch_id).first()
    if archive is None:
        if not wants_archive(reaction.batch):
            return
        archive = keep(reaction.batch)
    if not archive.is_pending:
        return  # kept (or found unavailable) already
    client = client or services.get_client(connection=archive.batch.connection)
    fetch_archive(archive, client, last_try=reaction.tries >= reactions.MAX_TRIES)


# --- Fetching ----------------------------------------------------------------


def fetch_archive(archive: ResultArchive, client: services.BatchClient, *, last_try: bool = True) -> None:
    """Download the batch's files, store them, index them, then announce results_kept (on commit).

    For the reaction that runs it: the upstream budget being spent raises reactions.Later; another API failure is
    noted on the archive for its page and raised again, for the reaction to retry with backoff, or (on its
    `last_try`) marks the archive unavailable; a file that cannot be indexed marks it unavailable with the reason
    and raises reactions.Failed, since fetching it again would not help.
    """
    batch = archive.batch
    _finish(archive, ArchiveState.ARCHIVING, problem=archive.problem)
    file_ids = {kind: getattr(batch, f"{kind}_file_id") for kind in FILE_KINDS}
    local: dict[str, str] = {}
    stored: dict[str, str] = {}
    gone: list[str] = []
    try:
        expiries = []
        for kind in ("output", "error", "input"):  # result files first: they expire, the input usually does not
            if not file_ids[kind]:
                continue
            try:
                info = client.retrieve_file(file_ids[kind])
                if info.bytes > max_file_bytes():
                    raise ResultFileTooLarge(f"The {kind} file is {format_size(info.bytes)}")
                local[kind] = _download(client, file_ids[kind])
            except services.NotFound:
                logger.info("Results of %s: the %s file %s is gone upstream.", batch.batch_id, kind, file_ids[kind])
                gone.append(kind)
                continue
            if kind != "input" and info.expires_at:
                expiries.append(info.expires_at)
        if "output" not in local and "error" not in local:
            _finish(
                archive,
                ArchiveState.UNAVAILABLE,
                problem="The API no longer has this batch's result files (they expired or were deleted) and they "
                "were not kept locally before.",
            )
            return
        for kind, path in local.items():
            with open(path, "rb") as handle:
                stored[kind] = results_storage().save(f"{storage_folder(batch.batch_id)}/{kind}.jsonl", File(handle))
        try:
            summary = _index(archive, local)
            with transaction.atomic():
                summary["files_gone"] = gone
                archive.state = ArchiveState.READY
                archive.archived_at = timezone.now()
                archive.problem = ""
                archive.summary = summary
                archive.stored_bytes = sum(os.path.getsize(path) for path in local.values())
                archive.upstream_expires_at = services.from_unix(min(expiries)) if expiries else None
                for kind in FILE_KINDS:
                    setattr(archive, f"{kind}_file_id", file_ids[kind] if kind in local else "")
                    setattr(archive, f"{kind}_name", stored.get(kind, ""))
                archive.save()
                transaction.on_commit(partial(_announce_kept, batch))
        except Exception:
            # The database refused a line of the index (or a lock timed out): a failed attempt with its reason, retried
            # with backoff by the reaction, and never an archive left "archiving" or half indexed.
            logger.exception("Indexing the results of %s failed", batch.batch_id)
            ResultLine.objects.filter(archive=archive).delete()
            raise
        stored = {}
        logger.info(
            "Results of %s kept locally: %s lines, %s bytes.", batch.batch_id, summary["rows"], archive.stored_bytes
        )
        evict_over_quota(keep_pk=archive.pk)
    except services.BudgetExhausted as exc:
        # batchboard's own budget of API calls: not a failure of this archive, so no try is counted.
        logger.info("Fetching the results of %s waits for the API budget: %s", batch.batch_id, exc)
        _finish(archive, ArchiveState.RETRY)
        raise reactions.Later(60, failure_message(exc)) from exc
    except (reactions.Failed, reactions.Later):
        raise
    except ResultFileTooLarge as exc:  # fetching it again would not help
        limit = f"BATCHBOARD_RESULT_FILE_MAX_MB ({settings.BATCHBOARD_RESULT_FILE_MAX_MB:,} MB)"
        problem = f"{exc}, more than {limit} allows: the results were not kept. Download the file from the API."
        logger.warning("Results of %s not kept: %s", batch.batch_id, problem)
        _finish(archive, ArchiveState.UNAVAILABLE, problem=problem, attempts=F("attempts") + 1)
        raise reactions.Failed(problem) from exc
    except Exception as exc:  # the API failing, or the results storage (a full disk): worth another try
        logger.warning("Fetching the results of %s failed: %s", batch.batch_id, exc)
        if isinstance(exc, services.BatchApiError):
            cause, problem = failure_message(exc), failure_message(exc, retry="batchboard will try again shortly.")
        else:
            detail = normalise.text(str(exc).strip().splitlines()[0], 300) if str(exc).strip() else "no details"
            cause = f"Keeping the results failed: {type(exc).__name__} ({detail})."
            problem = f"{cause} batchboard will try again shortly."
        if last_try:
            _finish(archive, ArchiveState.UNAVAILABLE, problem=cause, attempts=F("attempts") + 1)
            raise reactions.Failed(cause) from exc
        _finish(archive, ArchiveState.RETRY, problem=problem, attempts=F("attempts") + 1)
        raise
    finally:
        for path in local.values():
            os.unlink(path)
        for name in stored.values():  # stored, but the index was not written: nothing refers to them
            results_storage().delete(name)


def _announce_kept(batch: Batch) -> None:
    """results_kept, after the commit that stored the index; a failing receiver is logged and undoes nothing."""
    sent = events.results_kept.send_robust(sender=ResultArchive, batch_pk=batch.pk, batch_id=batch.batch_id)
    for receiver, outcome in sent:
        if isinstance(outcome, Exception):
            logger.error("A receiver of the results of %s failed: %s", batch.batch_id, receiver, exc_info=outcome)


def _finish(archive: ResultArchive, state: str, **fields) -> None:
    ResultArchive.objects.filter(pk=archive.pk).update(state=state, **fields)
    archive.refresh_from_db()


# A file system refuses a name over 255 bytes, and the stored names are columns of 255 characters: a compatible
# provider's ids run to 500 characters (LiteLLM's managed ids are ~250), so a long id's folder is a bounded prefix of
# it and a digest of the whole.
FOLDER_ID_CHARS = 100


def storage_folder(batch_id: str) -> str:
    """The folder of a batch's kept files in the results storage: its id, or a bounded stand-in for a long one."""
    if len(batch_id) <= FOLDER_ID_CHARS:
        return batch_id
    digest = hashlib.sha256(batch_id.encode()).hexdigest()[:24]
    return f"{batch_id[:64]}-{digest}"


def _download(client: services.BatchClient, file_id: str) -> str:
    """The file's bytes streamed into a local temporary file; its path. A file larger than max_file_bytes() (announced
    or as it arrives) raises ResultFileTooLarge, having kept at most that much on disk."""
    limit = max_file_bytes()
    descriptor, path = tempfile.mkstemp(prefix="batchboard-results-", suffix=".jsonl")
    try:
        with os.fdopen(descriptor, "wb") as handle, client.file_content(file_id) as chunks:
            if chunks.content_length is not None and chunks.content_length > limit:
                raise ResultFileTooLarge(f"The file {file_id} is {format_size(chunks.content_length)}")
            size = 0
            for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise ResultFileTooLarge(f"The file {file_id} is larger than {format_size(limit)}")
                handle.write(chunk)
    except BaseException:
        os.unlink(path)
        raise
    return path


# --- Indexing ----------------------------------------------------------------


@dataclass(slots=True)
class _Answer:
    """What the index keeps of one result line while joining: no body, only what a row shows."""

    file: str
    line: int
    offset: int
    length: int
    outcome: str
    status: int | None = None
    code: str = ""
    message: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    preview: str = ""


# The join's answer columns, in _Answer's order (it is rebuilt with _Answer(*columns)).
ANSWER_FIELDS = tuple(field.name for field in dataclasses.fields(_Answer))


class _Unreadable:
    """Lines that could not be read, counted, with the first few kept (file, line number, reason)."""

    def __init__(self):
        self.count = 0
        self.kept: list[dict] = []

    def add(self, file: str, line: int, reason: str) -> None:
        self.count += 1
        if len(self.kept) < UNREADABLE_KEPT:
            self.kept.append({"file": file, "line": line, "reason": reason})


@dataclass(slots=True)
class _Line:
    """One non-blank line of a file: where it is, and its content, or only its head when it is too long to keep."""

    number: int
    offset: int
    length: int  # in bytes, without the line break
    content: bytes | None  # None when longer than MAX_LINE_BYTES
    head: bytes = b""


def _lines(path: str) -> Iterator[_Line]:
    """Every non-blank line, streamed. A line longer than MAX_LINE_BYTES is never held whole: its first HEAD_BYTES
    are kept, the rest read in small pieces and dropped."""
    with open(path, "rb") as handle:
        offset = number = 0
        while raw := handle.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(raw) <= MAX_LINE_BYTES or raw.endswith(b"\n"):
                content = raw.rstrip(b"\r\n")
                if content.strip():
                    yield _Line(number, offset, len(content), content)
                offset += len(raw)
                continue
            head, total, last = raw[:HEAD_BYTES], len(raw), b""
            del raw
            while piece := handle.readline(STREAM_CHUNK):
                total += len(piece)
                last = piece
                if piece.endswith(b"\n"):
                    break
            yield _Line(number, offset, total - (len(last) - len(last.rstrip(b"\r\n"))), None, head)
            offset += total


def _too_long(line: _Line) -> str:
    return f"{TOO_LONG} ({format_size(line.length)}; lines of at most {format_size(MAX_LINE_BYTES)} are read)"


def _head_custom_id(head: bytes) -> str | None:
    """The custom_id of a line too long to parse, if its head names one (it comes first in the API's lines)."""
    match = _HEAD_CUSTOM_ID.search(head)
    if match is None:
        return None
    try:
        custom_id = json.loads(match.group(1))
    except ValueError:
        return None
    return custom_id if isinstance(custom_id, str) else None


def _parse(content: bytes) -> tuple[dict | None, str]:
    try:
        record = json.loads(content, parse_int=normalise.parse_int, parse_constant=normalise.parse_constant)
    except (ValueError, RecursionError):
        return None, "not valid JSON"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    if not isinstance(record.get("custom_id"), str):
        return None, "no custom_id"
    return record, ""


def _answer(record: dict, file: str, line: int, offset: int, length: int) -> _Answer | None:
    """A result line (REFERENCE §7) as a row's outcome, error, tokens and preview; None if it has neither part."""
    answer = _Answer(file=file, line=line, offset=offset, length=length, outcome=Outcome.FAILED.value)
    error, response = record.get("error"), record.get("response")
    if isinstance(error, dict) and error:
        answer.code = normalise.text(str(error.get("code") or ""), 64)
        answer.message = normalise.text(str(error.get("message") or ""), MESSAGE_LENGTH)
        answer.outcome = UNRUN_CODES.get(answer.code, Outcome.FAILED).value
        return answer
    if not isinstance(response, dict):
        return None
    status = response.get("status_code")
    answer.status = status if isinstance(status, int) and 100 <= status <= 599 else None
    body = response.get("body")
    if answer.status is not None and answer.status < 400:
        answer.outcome = Outcome.SUCCEEDED.value
        answer.input_tokens, answer.output_tokens = answers.usage_tokens(body)
        answer.preview = normalise.text(answers.one_line(answers.answer_text(body), PREVIEW_LENGTH), PREVIEW_LENGTH)
        return answer
    failure = body.get("error") if isinstance(body, dict) else None
    if isinstance(failure, dict):
        answer.code = normalise.text(str(failure.get("code") or failure.get("type") or ""), 64)
        answer.message = normalise.text(str(failure.get("message") or ""), MESSAGE_LENGTH)
    return answer


def _too_long_answer(line: _Line, file: str) -> _Answer:
    """A result line too long to read: its outcome from the HTTP status its head shows (failed without one)."""
    match = _HEAD_STATUS.search(line.head)
    status = int(match.group(1)) if match and 100 <= int(match.group(1)) <= 599 else None
    succeeded = status is not None and status < 400
    return _Answer(
        file=file,
        line=line.number,
        offset=line.offset,
        length=line.length,
        outcome=(Outcome.SUCCEEDED if succeeded else Outcome.FAILED).value,
        status=status,
        message="" if succeeded else f"The line is {_too_long(line)}: download it from its request page.",
        preview=f"({TOO_LONG}: {format_size(line.length)})",
    )


def _read_answers(path: str, file: str, unreadable: _Unreadable) -> Iterator[tuple[str, _Answer]]:
    for line in _lines(path):
        if line.content is None:
            unreadable.add(file, line.number, _too_long(line))
            custom_id = _head_custom_id(line.head)
            if custom_id is not None:
                yield storable_id(custom_id), _too_long_answer(line, file)
            continue
        record, reason = _parse(line.content)
        answer = _answer(record, file, line.number, line.offset, line.length) if record else None
        if answer is None:
            unreadable.add(file, line.number, reason or "neither a response nor an error")
            continue
        yield storable_id(record["custom_id"]), answer


def _read_inputs(path: str, unreadable: _Unreadable) -> Iterator[tuple[str, int, int, int, str]]:
    """(custom_id, line number, offset, length, what it asks in one line) of each input line; a line too long to
    read is joined by the custom_id its head names."""
    for line in _lines(path):
        if line.content is None:
            custom_id = _head_custom_id(line.head)
            if custom_id is None:
                unreadable.add("input", line.number, _too_long(line))
                continue
        else:
            record, reason = _parse(line.content)
            if record is None:
                unreadable.add("input", line.number, reason)
                continue
            custom_id = record["custom_id"]
        asked = ""
        if line.content is not None:
            text = answers.request_text(str(record.get("url") or ""), record.get("body"))
            asked = normalise.text(answers.one_line(text, PREVIEW_LENGTH), PREVIEW_LENGTH)
        yield storable_id(custom_id), line.number, line.offset, line.length, asked


class _Groups:
    """Failures grouped by outcome, HTTP status, code and message (numbers in messages ignored), and missing lines.

    At most MAX_GROUPS are told apart (error_group is a small integer, and a file whose messages all differ must not
    grow memory with its lines): lines of further groups have no group and count among the "other" lines.
    """

    def __init__(self):
        self.groups: dict[tuple, dict] = {}
        self.overflow_lines = 0

    def number(self, outcome: str, status: int | None, code: str, message: str, custom_id: str) -> int | None:
        if outcome == Outcome.SUCCEEDED:
            return None
        key = (outcome, status, code, _NUMBERS.sub("#", message))
        group = self.groups.get(key)
        if group is None:
            if len(self.groups) >= MAX_GROUPS:
                self.overflow_lines += 1
                return None
            group = self.groups[key] = {
                "number": len(self.groups) + 1,
                "outcome": outcome,
                "status": status,
                "code": code,
                "message": message,
                "count": 0,
                "custom_ids": [],
            }
        group["count"] += 1
        if len(group["custom_ids"]) < 3:
            group["custom_ids"].append(custom_id)
        return group["number"]

    def biggest(self) -> tuple[list[dict], int, int]:
        """The GROUPS_KEPT biggest groups, then how many other groups and lines there are (kept out of the summary,
        which every results page reads, when messages are all different)."""
        ordered = sorted(self.groups.values(), key=lambda group: (-group["count"], group["number"]))
        rest = ordered[GROUPS_KEPT:]
        others = len(rest) + (1 if self.overflow_lines else 0)
        return ordered[:GROUPS_KEPT], others, sum(group["count"] for group in rest) + self.overflow_lines


class _Join:
    """The join of answers to input lines by custom_id, in a temporary SQLite file rather than in memory: a file of
    300,000 lines costs disk, not RAM. The first input line with a custom_id gets all its answers (the first, then
    duplicates); answers whose custom_id no input line has come after, in the order they first appeared."""

    def __init__(self):
        descriptor, self.path = tempfile.mkstemp(prefix="batchboard-join-", suffix=".sqlite3")
        os.close(descriptor)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode = OFF")
        self.db.execute("PRAGMA synchronous = OFF")
        self.db.execute("PRAGMA cache_size = -4096")  # 4 MB
        columns = ", ".join(ANSWER_FIELDS)
        self.db.execute(f"CREATE TABLE answer (custom_id TEXT NOT NULL, {columns})")
        self.db.execute("CREATE TABLE input (custom_id TEXT NOT NULL, number, offset, length, first INTEGER, prompt)")

    def close(self) -> None:
        self.db.close()
        os.unlink(self.path)

    def add_answers(self, answers: Iterator[tuple[str, _Answer]]) -> None:
        placeholders = ", ".join(["?"] * (1 + len(ANSWER_FIELDS)))
        rows = ((custom_id, *(getattr(answer, name) for name in ANSWER_FIELDS)) for custom_id, answer in answers)
        while chunk := list(itertools.islice(rows, INSERT_CHUNK)):
            self.db.executemany(f"INSERT INTO answer VALUES ({placeholders})", chunk)  # noqa: S608 - our columns

    def add_inputs(self, inputs: Iterator[tuple[str, int, int, int, str]]) -> None:
        while chunk := list(itertools.islice(inputs, INSERT_CHUNK)):
            self.db.executemany("INSERT INTO input VALUES (?, ?, ?, ?, 0, ?)", chunk)

    def joined(self) -> Iterator[tuple[int, str, int, int, int, str, _Answer | None]]:
        """(input rowid, custom_id, line number, offset, length, prompt, answer or None) in input order, each input
        line's answers in file order."""
        self.db.execute("CREATE INDEX answer_custom_id ON answer (custom_id)")
        self.db.execute("CREATE INDEX input_custom_id ON input (custom_id)")
        self.db.execute("UPDATE input SET first = 1 WHERE rowid IN (SELECT MIN(rowid) FROM input GROUP BY custom_id)")
        columns = ", ".join(f"a.{name}" for name in ANSWER_FIELDS)
        rows = self.db.execute(
            f"SELECT i.rowid, i.custom_id, i.number, i.offset, i.length, i.prompt, a.rowid, {columns} "  # noqa: S608
            "FROM input AS i LEFT JOIN answer AS a ON i.first = 1 AND a.custom_id = i.custom_id "
            "ORDER BY i.rowid, a.rowid"
        )
        for seq, custom_id, number, offset, length, prompt, answer_id, *answer in rows:
            yield seq, custom_id, number, offset, length, prompt, _Answer(*answer) if answer_id is not None else None

    def unmatched(self) -> Iterator[tuple[str, _Answer]]:
        columns = ", ".join(f"a.{name}" for name in ANSWER_FIELDS)
        rows = self.db.execute(
            f"SELECT a.custom_id, {columns} FROM answer AS a "  # noqa: S608
            "WHERE NOT EXISTS (SELECT 1 FROM input AS i WHERE i.custom_id = a.custom_id) "
            "ORDER BY (SELECT MIN(b.rowid) FROM answer AS b WHERE b.custom_id = a.custom_id), a.rowid"
        )
        for custom_id, *answer in rows:
            yield custom_id, _Answer(*answer)


# The index's columns in the order _rows builds them: rows are inserted as tuples, not model instances, which costs
# a third of the time at 50,000 lines (`python -m benchmarks.results`).
COLUMNS = (
    "archive_id",
    "position",
    "line_number",
    "custom_id",
    "outcome",
    "status_code",
    "error_code",
    "error_message",
    "error_group",
    "duplicate",
    "input_offset",
    "input_length",
    "input_tokens",
    "output_tokens",
    "preview",
    "prompt",
    "result_file",
    "result_line",
    "result_offset",
    "result_length",
)


def _rows(archive: ResultArchive, local: dict[str, str], summary: dict) -> Iterator[tuple]:
    """Every row of the results table (a tuple of COLUMNS), in input order, joined by custom_id; fills in
    `summary` as it goes. Memory stays flat whatever the files hold (see _lines, _Groups and _Join)."""
    unreadable = _Unreadable()
    groups = _Groups()
    outcomes: Counter = Counter()
    codes: Counter = Counter()
    position = 0
    duplicates = input_lines = unmatched = 0

    def row(
        custom_id, answer, line_number=None, input_offset=None, input_length=None, duplicate=False, prompt=""
    ) -> tuple:
        nonlocal position
        position += 1
        if answer is None:
            outcome, status, code, message = Outcome.MISSING.value, None, "", ""
        else:
            outcome, status, code, message = answer.outcome, answer.status, answer.code, answer.message
        group = None
        if not duplicate:
            outcomes[outcome] += 1
            if code and (code in codes or len(codes) < MAX_GROUPS):
                codes[code] += 1
            group = groups.number(outcome, status, code, message, custom_id)
        head = (archive.pk, position, line_number, custom_id, outcome, status, code, message, group, duplicate)
        where = (input_offset, input_length)
        if answer is None:
            return (*head, *where, None, None, "", prompt or "", "", None, None, None)
        result = (answer.file, answer.line, answer.offset, answer.length)
        return (*head, *where, answer.input_tokens, answer.output_tokens, answer.preview, prompt or "", *result)

    join = _Join()
    try:
        for kind, code in (("output", ResultLine.OUTPUT), ("error", ResultLine.ERROR)):
            if kind in local:
                join.add_answers(_read_answers(local[kind], code, unreadable))
        if "input" in local:
            join.add_inputs(_read_inputs(local["input"], unreadable))
        previous = None
        for seq, custom_id, number, offset, length, prompt, answer in join.joined():
            duplicate = seq == previous
            previous = seq
            input_lines += not duplicate
            duplicates += duplicate
            yield row(custom_id, answer, number, offset, length, duplicate=duplicate, prompt=prompt)
        current, index = None, 0
        for custom_id, answer in join.unmatched():
            index = index + 1 if custom_id == current else 0
            current = custom_id
            unmatched += 1
            duplicates += index > 0
            yield row(custom_id, answer, duplicate=index > 0)
    finally:
        join.close()

    biggest, other_groups, other_group_lines = groups.biggest()
    summary.update(
        rows=position,
        input_lines=input_lines,
        input_missing="input" not in local,
        outcomes=dict(outcomes),
        codes=dict(codes.most_common(GROUPS_KEPT)),
        groups=biggest,
        other_groups=other_groups,
        other_group_lines=other_group_lines,
        duplicates=duplicates,
        unmatched=unmatched if "input" in local else 0,
        unreadable=unreadable.kept,
        unreadable_count=unreadable.count,
    )


def _index(archive: ResultArchive, local: dict[str, str]) -> dict:
    """Replace the archive's index with one built from the local files, in chunks; the summary it found.

    Each chunk is its own short transaction, so that other writers never wait for a whole file's index (SQLite has
    one writer at a time: a 50,000-line index in one transaction held up the sync loop for 20 s). Pages show the
    lines only once the archive is READY, which the caller records afterwards.
    """
    ResultLine.objects.filter(archive=archive).delete()
    quote = connection.ops.quote_name
    columns = ", ".join(quote(column) for column in COLUMNS)
    placeholders = ", ".join(["%s"] * len(COLUMNS))
    # Names from the model's own metadata, values as parameters.
    sql = f"INSERT INTO {quote(ResultLine._meta.db_table)} ({columns}) VALUES ({placeholders})"  # noqa: S608
    summary: dict = {}
    with closing(_rows(archive, local, summary)) as rows, connection.cursor() as cursor:
        while chunk := list(itertools.islice(rows, INSERT_CHUNK)):
            with transaction.atomic():
                cursor.executemany(sql, chunk)
        if connection.vendor == "postgresql":
            # Statistics now rather than when autovacuum comes by: until then the planner takes the batch's lines for
            # a handful and walks them, computing each line's words for a search (0.4 s for 50,000) instead of
            # reading its indexes (2 ms). It reads a sample of at most 30,000 lines, however big the table.
            cursor.execute(f"ANALYZE {quote(ResultLine._meta.db_table)}")
    return summary


# --- Reading -----------------------------------------------------------------


class StoredFiles:
    """The archive's stored files, opened on first use and kept open for a run of reads (an export, a page)."""

    def __init__(self, archive: ResultArchive):
        self.names = archive.stored_names
        self._stack = ExitStack()
        self._open: dict[str, object] = {}

    def __enter__(self) -> StoredFiles:
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def _handle(self, kind: str):
        handle = self._open.get(kind)
        if handle is None:
            handle = self._open[kind] = self._stack.enter_context(results_storage().open(self.names[kind], "rb"))
        return handle

    def read(self, kind: str, offset: int | None, length: int | None, *, limit: int = MAX_LINE_BYTES) -> bytes | None:
        """The bytes of one line, exactly as stored; None when that file or line is not kept, or the line is longer
        than `limit` (a line too long to keep is only streamed: see stream())."""
        if offset is None or length is None or kind not in self.names or length > limit:
            return None
        handle = self._handle(kind)
        handle.seek(offset)
        return handle.read(length)

    def head(self, kind: str, offset: int | None, length: int | None, size: int) -> bytes | None:
        """The first `size` bytes of one line (all of it when shorter); None when it is not kept."""
        return self.read(kind, offset, None if length is None else min(length, size), limit=size)

    def stream(self, kind: str, offset: int | None, length: int | None) -> Iterator[bytes]:
        """One line's bytes in chunks of STREAM_CHUNK, whatever its length (the raw line download)."""
        if offset is None or length is None or kind not in self.names:
            return
        handle = self._handle(kind)
        remaining = length
        while remaining > 0:
            handle.seek(offset + length - remaining)
            chunk = handle.read(min(STREAM_CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk

    def input_bytes(self, line: ResultLine) -> bytes | None:
        return self.read("input", line.input_offset, line.input_length)

    def result_bytes(self, line: ResultLine) -> bytes | None:
        return self.read(line.result_kind, line.result_offset, line.result_length)

    def input_record(self, line: ResultLine) -> dict | None:
        return loads_record(self.input_bytes(line))

    def result_record(self, line: ResultLine) -> dict | None:
        return loads_record(self.result_bytes(line))


# A "\ud800" escape, or the bytes of a surrogate: JSON that reads as a lone surrogate, which no page can encode.
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def loads_record(raw: bytes | None) -> dict | None:
    """A stored line as a JSON object, safe to show (no lone surrogate); None when there is none or it is not one."""
    if raw is None:
        return None
    try:
        record = json.loads(raw, parse_int=normalise.parse_int, parse_constant=normalise.parse_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    if _SURROGATE.search(raw):
        record = normalise.json_value(record, length=len(raw), max_depth=64, max_items=None)
    return record


def iter_input_bytes(archive: ResultArchive, lines) -> Iterator[bytes]:
    """The original input lines of `lines` (a ResultLine QuerySet, e.g. `.matching(filter).input_lines()`), byte for
    byte, each followed by a newline, in input order: what a retry of those lines uploads."""
    with StoredFiles(archive) as files:
        for line in lines.in_order().only("input_offset", "input_length").iterator(chunk_size=INSERT_CHUNK):
            if line.input_offset is not None:
                yield b"".join(files.stream("input", line.input_offset, line.input_length)) + b"\n"


# --- Upstream deletion and retention -------------------------------------------


def _unchecked(now):
    """Kept archives whose files the API may still have, not asked about for CHECK_UPSTREAM_EVERY."""
    queryset = ResultArchive.objects.filter(state=ArchiveState.READY, upstream_deleted_at__isnull=True)
    queryset = queryset.filter(Q(upstream_expires_at__isnull=True) | Q(upstream_expires_at__gt=now))
    return queryset.filter(Q(upstream_checked_at__isnull=True) | Q(upstream_checked_at__lt=now - CHECK_UPSTREAM_EVERY))


def check_upstream(limit: int = 5, *, client: services.BatchClient | None = None) -> int:
    """Ask whether the API still has the result files of up to `limit` archives (each at most once a day), so pages
    can say "deleted upstream" (`manage.py archive_results` runs it; opening a results page asks for its own).
    An archive whose files expired needs no call."""
    checked = 0
    unchecked = _unchecked(timezone.now()).select_related("batch__connection")
    for archive in unchecked.order_by("upstream_checked_at", "pk")[:limit]:
        try:
            _check_one(archive, client or services.get_client(connection=archive.batch.connection))
        except services.BatchApiError as exc:
            logger.info("Could not check the results of %s upstream: %s", archive.batch_id, exc)
            break  # the API is failing: try again later
        checked += 1
    return checked


def _check_one(archive: ResultArchive, client: services.BatchClient) -> None:
    now = timezone.now()
    file_id = archive.output_file_id or archive.error_file_id
    if file_id:
        try:
            client.retrieve_file(file_id)
        except services.NotFound:
            archive.upstream_deleted_at = now
    archive.upstream_checked_at = now
    archive.save(update_fields=["upstream_deleted_at", "upstream_checked_at"])


def _check_when_due(archive: ResultArchive) -> None:
    """A results page was opened: ask once a day whether the API still has its files (a reaction: the page itself
    never calls the API). No query unless a check is due."""
    now = timezone.now()
    stale = archive.upstream_checked_at is None or archive.upstream_checked_at < now - CHECK_UPSTREAM_EVERY
    if not archive.is_ready or archive.deleted_upstream or not stale:
        return
    # Noted as checked when asked, so that the viewers of the next day ask no more; the reaction notes it again.
    if _unchecked(now).filter(pk=archive.pk).update(upstream_checked_at=now):
        archive.upstream_checked_at = now
        reactions.schedule(CHECK_STEP, archive.batch_id, attempt=int(now.timestamp() // 86_400))


def check_for_reaction(reaction: Reaction, client: services.BatchClient | None = None) -> None:
    """The check_results_upstream reaction's body; an API failure is retried by the reaction."""
    kept = ResultArchive.objects.filter(state=ArchiveState.READY, upstream_deleted_at__isnull=True)
    archive = kept.select_related("batch__connection").filter(batch_id=reaction.batch_id).first()
    if archive is not None:
        _check_one(archive, client or services.get_client(connection=archive.batch.connection))


def prune_archive(archive: ResultArchive) -> None:
    """Delete the stored files and the per-line index; the summary (counts per outcome and error group) stays."""
    names = list(archive.stored_names.values())
    with transaction.atomic():
        ResultLine.objects.filter(archive=archive).delete()
        archive.state = ArchiveState.PRUNED
        archive.pruned_at = timezone.now()
        archive.input_name = archive.output_name = archive.error_name = ""
        archive.save()
    for name in names:
        results_storage().delete(name)


def evict_over_quota(*, keep_pk: int | None = None) -> int:
    """Stay within BATCHBOARD_ARCHIVE_MAX_GB: delete the stored files of the archives opened least recently (never
    opened first, then the oldest kept), keeping their summaries and per-line index, until the kept files fit.
    The archive `keep_pk` (just kept) is never evicted. Returns how many were evicted.

    Cost: one aggregate when within the quota; past it, one small query per evicted archive, in eviction order.
    """
    limit = int(settings.BATCHBOARD_ARCHIVE_MAX_GB * 1_000_000_000)
    if not limit:
        return 0
    kept = ResultArchive.objects.filter(state=ArchiveState.READY, evicted_at__isnull=True)
    total = kept.aggregate(total=Sum("stored_bytes"))["total"] or 0
    evicted = 0
    order = (F("last_opened_at").asc(nulls_first=True), "archived_at", "pk")
    candidates = kept.exclude(pk=keep_pk).order_by(*order).only("pk", "stored_bytes", *NAME_FIELDS)
    for archive in candidates.iterator(chunk_size=100):
        if total <= limit:
            break
        total -= archive.stored_bytes
        evict_files(archive)
        evicted += 1
    if evicted:
        logger.info("Evicted the kept files of %s batch(es) to stay within BATCHBOARD_ARCHIVE_MAX_GB.", evicted)
    return evicted


NAME_FIELDS = ("input_name", "output_name", "error_name")


def evict_files(archive: ResultArchive) -> None:
    """Delete the stored files only: the summary and the per-line index (the results table) stay."""
    names = list(archive.stored_names.values())
    ResultArchive.objects.filter(pk=archive.pk).update(
        evicted_at=timezone.now(), stored_bytes=0, **dict.fromkeys(NAME_FIELDS, "")
    )
    for name in names:
        results_storage().delete(name)
