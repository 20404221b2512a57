"""The create-batch form and the streaming JSONL validation that runs before anything is sent upstream."""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from django import forms
from django.conf import settings

from batches import services
from batches.estimate import Estimate, InputCounter
from batches.formatting import format_size
from batches.lineage_keys import MAX_PARTS, PART_KEYS
from batches.models import DEFAULT_CONNECTION, DESCRIPTION_KEY, Connection

MAX_REPORTED_ERRORS = 20
METADATA_ROWS_SHOWN = 4
UTF8_BOM = b"\xef\xbb\xbf"
EXPIRY_UNITS = {"hours": 3600, "days": 86400}
# The longest line (one request) the validator reads. Parsing a JSON line costs up to ~25 times its size, so this is
# what bounds the validator's memory whatever the file holds; no real Batch API request comes near it.
MAX_LINE_BYTES = 10 * 1024 * 1024
# Past the cap, the rest of a line is read and dropped in pieces of this size.
_SKIP_CHUNK_BYTES = 64 * 1024
_TOO_LONG = b"x"  # stands for a line that was not read; not blank, never parsed


# --- JSONL validation -------------------------------------------------------


@dataclass
class JsonlReport:
    """What validating an input file found: counts, the endpoint and model, and its problems.

    Problems with the whole file are all kept; problems on lines are kept up to MAX_REPORTED_ERRORS and counted.
    """

    requests: int = 0
    size: int = 0
    endpoint: str | None = None
    model: str | None = None
    first_custom_id: str | None = None
    file_errors: list[str] = field(default_factory=list)
    line_errors: list[str] = field(default_factory=list)
    line_problems: list[tuple[int, str]] = field(default_factory=list)  # the same, as (line, message) for the API
    line_error_count: int = 0
    parts: list[FilePart] = field(default_factory=list)  # how the file is sent: one part per batch

    @property
    def is_split(self) -> bool:
        return len(self.parts) > 1

    @property
    def split_summary(self) -> str:
        """ "3 batches of 50,000, 50,000 and 20,000 requests" """
        counts = [f"{part.requests:,}" for part in self.parts]
        listed = ", ".join(counts[:-1]) + f" and {counts[-1]}" if len(counts) > 1 else counts[0]
        return f"{len(self.parts)} batches of {listed} requests"

    @property
    def is_valid(self) -> bool:
        return not self.file_errors and not self.line_error_count

    def add(self, message: str, line: int | None = None) -> None:
        if line is None:
            self.file_errors.append(message)
            return
        self.line_error_count += 1
        if len(self.line_errors) < MAX_REPORTED_ERRORS:
            self.line_errors.append(f"Line {line:,}: {message}")
            self.line_problems.append((line, message))

    @property
    def messages(self) -> list[str]:
        """Every problem to show, the line problems capped with a count of the ones left out."""
        hidden = self.line_error_count - len(self.line_errors)
        more = [f"…and {hidden:,} more problem{'s' if hidden != 1 else ''}."] if hidden else []
        return [*self.file_errors, *self.line_errors, *more]


@dataclass(frozen=True)
class FilePart:
    """A run of whole lines of the input file that fits one batch: `length` bytes from byte `start`, `requests`
    requests, the first of them on line `first_line` of the file."""

    start: int
    length: int
    requests: int
    first_line: int


class _IdTable:
    """custom_ids seen so far, as 64-bit digests with the line of each, in an open-addressing table of two flat arrays
    (12 bytes a slot, at most half full): about 24 bytes an id, a tenth of a dict of digests, so a file of millions
    of lines is checked for duplicates in bounded memory. Two different ids share a 64-bit digest with a chance of
    about n²/2⁶⁵ (one in 300,000 for 10 million ids); that would be reported as a duplicate."""

    def __init__(self, capacity: int = 1 << 12):
        self._keys = array("Q", bytes(8 * capacity))
        self._lines = array("I", bytes(4 * capacity))
        self._used = 0

    def first_line(self, digest: int, line_number: int) -> int:
        """The line the id was first seen on; records it on `line_number` when new."""
        digest = digest or 1  # 0 marks an empty slot
        keys, mask = self._keys, len(self._keys) - 1
        slot = digest & mask
        while keys[slot]:
            if keys[slot] == digest:
                return self._lines[slot]
            slot = (slot + 1) & mask
        keys[slot], self._lines[slot] = digest, min(line_number, 0xFFFFFFFF)
        self._used += 1
        if self._used * 2 > len(keys):
            self._grow()
        return line_number

    def _grow(self) -> None:
        keys, lines = self._keys, self._lines
        self.__init__(len(keys) * 2)
        for key, line in zip(keys, lines, strict=True):
            if key:
                self.first_line(key, line)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _id_digest(custom_id: str) -> int:
    # 8-byte digests keep the duplicate check's memory small whatever the length of the ids (see _IdTable).
    return int.from_bytes(hashlib.blake2b(custom_id.encode("utf-8", "surrogatepass"), digest_size=8).digest())


def validate_jsonl(
    handle: BinaryIO,
    *,
    endpoint: str | None = None,
    size: int | None = None,
    observe: Callable[[dict], None] | None = None,
    split: bool = False,
) -> JsonlReport:
    """Check a Batch API input file line by line, reading it as a stream (memory stays bounded by MAX_LINE_BYTES).

    Every line must be a JSON object with a non-empty unique `custom_id`, `method` POST, `url` equal to the
    endpoint (taken from the first line when not given) and an object `body`; one `body.model` for the whole
    file; at most MAX_REQUESTS_PER_BATCH lines and MAX_INPUT_FILE_BYTES bytes; UTF-8 without a byte order mark.
    Blank lines at the end are tolerated. `observe` is given each request parsed, in the same pass (the estimate).

    With `split`, a file over the per-batch limits is not refused (up to BATCHBOARD_MAX_UPLOAD_BYTES): it is planned
    as parts on line boundaries, each within both limits (report.parts), checked as a whole all the same (custom_id
    unique across the file, one endpoint and model). A file within the limits is one part either way.
    """
    report = JsonlReport(endpoint=endpoint or None)
    limit = settings.BATCHBOARD_MAX_UPLOAD_BYTES if split else services.MAX_INPUT_FILE_BYTES
    if size is not None and size > limit:
        report.size = size
        report.add(_too_large(size, split=split))
        return report

    scan = _Scan()
    planner = _PartPlanner()
    blank_run_start, blank_run_length = 0, 0
    line_number = 0
    for raw, length in _lines(handle):
        line_number += 1
        offset = report.size
        report.size += length
        if raw is None:
            raw = _TOO_LONG
        elif line_number == 1 and raw.startswith(UTF8_BOM):
            report.add("the file starts with a UTF-8 byte order mark (BOM). Save it as UTF-8 without BOM.", 1)
            raw = raw[len(UTF8_BOM) :]
        if not raw.strip():
            blank_run_start = blank_run_start if blank_run_length else line_number
            blank_run_length += 1
            continue
        for blank in range(blank_run_start, blank_run_start + blank_run_length):
            report.add("blank line; only the end of the file may have blank lines.", blank)
        blank_run_length = 0
        report.requests += 1
        planner.add(offset, length, line_number)
        if report.requests > services.MAX_REQUESTS_PER_BATCH and not split:
            continue  # Only counted: the file is invalid whatever these lines hold, and the id set stops growing.
        if raw is _TOO_LONG:
            report.add(
                f"the line is {format_size(length)} ({length:,} bytes) long; a line may hold at most "
                f"{format_size(MAX_LINE_BYTES)} ({MAX_LINE_BYTES:,} bytes). It was not read.",
                line_number,
            )
            continue
        request = _parse_line(raw, line_number, report)
        if request is not None:
            _check_request(request, line_number, report, scan)
            if observe is not None:
                observe(request)

    if report.size > limit:
        report.add(_too_large(report.size, split=split))
    if report.requests > services.MAX_REQUESTS_PER_BATCH and not split:
        report.add(
            f"The file has {report.requests:,} requests; a batch holds at most "
            f"{services.MAX_REQUESTS_PER_BATCH:,}. Split it into several files."
        )
    if report.requests == 0:
        report.add("The file is empty: it has no requests.")
    report.parts = planner.finish(report.size)
    if len(report.parts) > MAX_PARTS:
        report.add(f"The file would be sent as {len(report.parts):,} batches; a job holds at most {MAX_PARTS:,}.")
    return report


class _PartPlanner:
    """Cuts the file into parts as its lines go by: a new part starts at the request that would take the current one
    past MAX_REQUESTS_PER_BATCH requests or MAX_INPUT_FILE_BYTES bytes. Blank lines at the end stay with the last
    part, so every byte of the file is in exactly one part."""

    def __init__(self):
        self.parts: list[FilePart] = []
        self.start, self.requests, self.first_line = 0, 0, 1

    def add(self, offset: int, length: int, line_number: int) -> None:
        full = self.requests >= services.MAX_REQUESTS_PER_BATCH
        if self.requests and (full or offset + length - self.start > services.MAX_INPUT_FILE_BYTES):
            self.parts.append(FilePart(self.start, offset - self.start, self.requests, self.first_line))
            self.start, self.requests, self.first_line = offset, 0, line_number
        self.requests += 1

    def finish(self, size: int) -> list[FilePart]:
        if self.requests:
            self.parts.append(FilePart(self.start, size - self.start, self.requests, self.first_line))
        return self.parts


def _lines(handle: BinaryIO):
    """Each line and its length in bytes; None instead of the line when it is longer than MAX_LINE_BYTES.

    A longer line is never held whole: its rest is read in small pieces and dropped.
    """
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        if len(raw) <= MAX_LINE_BYTES or raw.endswith(b"\n"):
            yield raw, len(raw)
            continue
        length = len(raw)
        del raw
        while piece := handle.readline(_SKIP_CHUNK_BYTES):
            length += len(piece)
            if piece.endswith(b"\n"):
                break
        yield None, length


def _too_large(size: int, *, split: bool = False) -> str:
    if split:
        limit = settings.BATCHBOARD_MAX_UPLOAD_BYTES
        return (
            f"The file is {format_size(size)} ({size:,} bytes); this dashboard takes files of at most "
            f"{format_size(limit)} ({limit:,} bytes) (BATCHBOARD_MAX_UPLOAD_BYTES)."
        )
    limit = services.MAX_INPUT_FILE_BYTES
    return (
        f"The file is {format_size(size)} ({size:,} bytes); the Batch API accepts at most "
        f"{format_size(limit)} ({limit:,} bytes)."
    )


def _parse_line(raw: bytes, line_number: int, report: JsonlReport) -> dict | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        report.add(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}).", line_number)
        return None
    try:
        # Without its line ending, so that a line cut short is reported where it stops, not at "column 1" after it.
        request = json.loads(text.rstrip("\r\n"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        detail = f" ({exc.msg} at column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        report.add(f"not valid JSON{detail}.", line_number)
        return None
    if not isinstance(request, dict):
        report.add(f"expected a JSON object, found {type(request).__name__}.", line_number)
        return None
    return request


@dataclass
class _Scan:
    """What a validation pass remembers between lines."""

    seen_ids: _IdTable = field(default_factory=_IdTable)
    model_line: int | None = None
    first_line_without_model: int | None = None


def _check_request(request: dict, line_number: int, report: JsonlReport, scan: _Scan) -> None:
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        report.add("custom_id must be a non-empty string.", line_number)
    else:
        if report.first_custom_id is None:
            report.first_custom_id = custom_id
        digest = _id_digest(custom_id)
        first = scan.seen_ids.first_line(digest, line_number)
        if first != line_number:
            shown = custom_id if len(custom_id) <= 80 else custom_id[:77] + "…"
            report.add(f"custom_id {shown!r} is already used on line {first:,}.", line_number)

    if request.get("method") != "POST":
        report.add(f'method must be "POST", found {_shown(request.get("method"))}.', line_number)

    url = request.get("url")
    if not isinstance(url, str) or not url:
        report.add('url must be the endpoint path, such as "/v1/chat/completions".', line_number)
    elif report.endpoint is None:
        if url in services.ENDPOINTS:
            report.endpoint = url
        else:
            report.add(f"url {url!r} is not a Batch API endpoint ({', '.join(services.ENDPOINTS)}).", line_number)
    elif url != report.endpoint:
        report.add(f"url is {url!r}; every line must use the batch's endpoint {report.endpoint!r}.", line_number)

    body = request.get("body")
    if not isinstance(body, dict):
        report.add(f"body must be a JSON object, found {_shown(body)}.", line_number)
    else:
        if body.get("stream") is True:
            report.add("body.stream is true; batch requests cannot stream.", line_number)
        _check_model(body.get("model"), line_number, report, scan)


def _check_model(model, line_number: int, report: JsonlReport, scan: _Scan) -> None:
    """One model per file: every line that names a model names the same one, and then every line names it.

    Only the endpoints that have a default model accept lines without one.
    """
    if model is None:
        if report.endpoint and report.endpoint not in services.ENDPOINTS_WITHOUT_MODEL:
            report.add(f"body.model is missing; requests to {report.endpoint} name their model.", line_number)
        elif report.model:
            report.add(f"body.model is missing but line {scan.model_line:,} uses {report.model!r}.", line_number)
        elif scan.first_line_without_model is None:
            scan.first_line_without_model = line_number
        return
    if not isinstance(model, str) or not model:
        report.add("body.model must be a non-empty string.", line_number)
    elif report.model is None:
        report.model, scan.model_line = model, line_number
        if scan.first_line_without_model:
            report.add(f"body.model is missing but line {line_number:,} uses {model!r}.", scan.first_line_without_model)
    elif model != report.model:
        report.add(
            f"body.model is {model!r} but line {scan.model_line:,} uses {report.model!r}; a batch runs a single model.",
            line_number,
        )


def _shown(value) -> str:
    if value is None:
        return "nothing"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "…"


# --- The form ---------------------------------------------------------------


def metadata_field_names(number: int) -> tuple[str, str]:
    return f"metadata_key_{number}", f"metadata_value_{number}"


class ConnectionChoiceField(forms.ModelChoiceField):
    """A connection, offered as "Research (Azure OpenAI)"."""

    def label_from_instance(self, obj: Connection) -> str:
        return f"{obj.name} ({obj.get_kind_display()})"


class CreateBatchForm(forms.Form):
    """Create a batch from an uploaded JSONL file or from a file id already uploaded with purpose batch."""

    input_file = forms.FileField(
        required=False,
        allow_empty_file=True,  # the validator says so, in its own words, instead of "choose a file"
        label="JSONL file",
        help_text="One request per line. A file over the API's limits (50,000 requests or 200 MB) is sent as several "
        "batches of one job.",
        widget=forms.FileInput(attrs={"accept": ".jsonl,application/jsonl,application/x-ndjson"}),
    )
    input_file_id = forms.CharField(
        required=False,
        max_length=services.ID_LENGTH,
        label="or an uploaded file id",
        help_text="A file uploaded with purpose “batch”, such as file-abc123.",
        widget=forms.TextInput(attrs={"placeholder": "file-…", "autocomplete": "off", "spellcheck": "false"}),
    )
    description = forms.CharField(
        required=False,
        max_length=services.METADATA_MAX_VALUE_LENGTH,
        label="Description",
        help_text="What this batch is, in a few words: the list shows it under the id (metadata key “description”).",
    )
    endpoint = forms.ChoiceField(
        required=False,
        choices=[("", "Infer from the file")] + [(e, e) for e in services.ENDPOINTS],
    )
    completion_window = forms.ChoiceField(
        choices=[(w, w) for w in services.COMPLETION_WINDOWS], initial=services.COMPLETION_WINDOWS[0]
    )
    output_expiry_amount = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=720,
        label="Delete results after",
        help_text="Optional: between 1 hour and 30 days after the result files are written.",
    )
    output_expiry_unit = forms.ChoiceField(choices=[("hours", "hours"), ("days", "days")], initial="days", label="Unit")
    token = forms.UUIDField(widget=forms.HiddenInput, initial=uuid.uuid4)
    connection = ConnectionChoiceField(
        queryset=Connection.objects.none(),
        required=False,
        empty_label=None,
        label="Connection",
        help_text="Where the batch is sent: only the connections your teams may create on are offered.",
        widget=forms.RadioSelect,
        error_messages={
            "invalid_choice": "You may not create batches on that connection: choose one of those offered.",
        },
    )

    def __init__(self, *args, connections: list[Connection] | None = None, split: bool = False, **kwargs):
        """`connections`: those the user may create on; None for the default connection alone (no choice shown).
        `split`: a file over the API's limits is planned as several parts (the create page and the API) instead of
        refused (a retry's input, built from one batch's lines, never needs it)."""
        super().__init__(*args, **kwargs)
        self.split = split
        self.allowed_connections = connections
        if connections is None:
            self.fields["connection"].queryset = Connection.objects.filter(slug=DEFAULT_CONNECTION)
        else:
            self.fields["connection"].queryset = Connection.objects.filter(pk__in=[c.pk for c in connections])
        if connections is None or len(connections) == 1:
            self.fields["connection"].initial = connections[0].pk if connections else None
            self.fields["connection"].widget = forms.HiddenInput()
        for number in range(1, services.METADATA_MAX_PAIRS + 1):
            key_name, value_name = metadata_field_names(number)
            self.fields[key_name] = forms.CharField(
                required=False,
                max_length=services.METADATA_MAX_KEY_LENGTH,
                label=f"Metadata key {number}",
                strip=True,
            )
            self.fields[value_name] = forms.CharField(
                required=False,
                max_length=services.METADATA_MAX_VALUE_LENGTH,
                label=f"Metadata value {number}",
                strip=False,
            )
        self.report: JsonlReport | None = None
        self.estimate: Estimate | None = None  # what a valid upload will cost, counted during its validation

    def metadata_rows(self) -> list[tuple[forms.BoundField, forms.BoundField]]:
        return [
            (self[key_name], self[value_name])
            for key_name, value_name in (metadata_field_names(n) for n in range(1, services.METADATA_MAX_PAIRS + 1))
        ]

    def visible_metadata_rows(self):
        return self.metadata_rows()[:METADATA_ROWS_SHOWN]

    def more_metadata_rows(self):
        return self.metadata_rows()[METADATA_ROWS_SHOWN:]

    def more_metadata_used(self) -> bool:
        """Open the extra rows when any of them holds a value (or an error), so nothing typed is hidden."""
        return any(
            key.value() or value.value() or key.errors or value.errors for key, value in self.more_metadata_rows()
        )

    def clean_input_file_id(self) -> str:
        file_id = self.cleaned_data["input_file_id"].strip()
        if file_id and not services.ANY_ID_PATTERN.fullmatch(file_id):
            raise forms.ValidationError("A file id looks like file-abc123.")
        return file_id

    def clean_connection(self) -> Connection | None:
        """The chosen connection; the only one allowed when none was sent (a form from before connections). None
        means the default connection."""
        connection = self.cleaned_data.get("connection")
        if connection is not None or self.allowed_connections is None:
            return connection
        if len(self.allowed_connections) == 1:
            return self.allowed_connections[0]
        raise forms.ValidationError("Choose the connection to send the batch to.")

    @staticmethod
    def _id_shapes(cleaned: dict) -> services.IdShapes:
        """The ids of the chosen connection; None is the default one, of the OPENAI_* settings: OpenAI's ids."""
        connection = cleaned.get("connection")
        return connection.id_shapes if connection is not None else services.OPENAI_IDS

    def clean(self):
        cleaned = super().clean()
        upload = cleaned.get("input_file")
        file_id = cleaned.get("input_file_id")
        if "input_file_id" not in cleaned:
            return cleaned  # Already reported on the field.
        if upload and file_id:
            raise forms.ValidationError("Choose either a file to upload or an uploaded file id, not both.")
        if not upload and not file_id:
            raise forms.ValidationError("Choose a JSONL file to upload, or give the id of an uploaded file.")
        if file_id and not self._id_shapes(cleaned).file.fullmatch(file_id):
            self.add_error("input_file_id", "That is not a file id of this connection: they look like file-abc123.")
        if file_id and not cleaned.get("endpoint"):
            self.add_error("endpoint", "Choose the endpoint: it can only be inferred from an uploaded file.")
        cleaned["metadata"] = self._clean_metadata()
        cleaned["output_expires_after"] = self._clean_output_expiry()
        if upload:
            self._validate_upload(upload, cleaned)
        return cleaned

    def _validate_upload(self, upload, cleaned) -> None:
        upload.seek(0)
        counter = InputCounter(endpoint=cleaned.get("endpoint") or None)
        self.report = validate_jsonl(
            upload, endpoint=cleaned.get("endpoint") or None, size=upload.size, observe=counter.add, split=self.split
        )
        upload.seek(0)
        self.estimate = counter.result() if self.report.is_valid else None
        if not self.report.is_valid:
            self.add_error("input_file", self.report.messages)
            return
        if not cleaned.get("endpoint"):
            cleaned["endpoint"] = self.report.endpoint
        if self.report.is_split:
            self._check_room_for_part_keys(cleaned.get("metadata") or {})

    def _check_room_for_part_keys(self, metadata: dict[str, str]) -> None:
        """Each part carries the job's keys besides the user's pairs: they must fit the API's pairs together."""
        taken = [key for key in PART_KEYS if key in metadata]
        if taken:
            self.add_error("description", f"The key {taken[0]!r} names the parts of a split file: choose another key.")
        room = services.METADATA_MAX_PAIRS - len(PART_KEYS)
        if len(metadata) > room:
            self.add_error(
                "description",
                f"This file is sent as {self.report.split_summary}, and each carries {len(PART_KEYS)} metadata pairs "
                f"of its own ({', '.join(PART_KEYS)}): at most {room} of yours fit, description included; "
                f"you gave {len(metadata)}.",
            )

    def _clean_metadata(self) -> dict[str, str]:
        description = self.cleaned_data.get("description", "").strip()
        metadata: dict[str, str] = {DESCRIPTION_KEY: description} if description else {}
        for number in range(1, services.METADATA_MAX_PAIRS + 1):
            key_name, value_name = metadata_field_names(number)
            if key_name not in self.cleaned_data or value_name not in self.cleaned_data:
                continue  # Too long: the field has its error already.
            key, value = self.cleaned_data[key_name], self.cleaned_data[value_name]
            if not key:
                if value:
                    self.add_error(key_name, "Give this value a key.")
                continue
            if key == DESCRIPTION_KEY and description:
                self.add_error(key_name, "The description is set in the Description field above.")
                continue
            if key in metadata:
                self.add_error(key_name, f"The key {key!r} is used twice.")
                continue
            metadata[key] = value
        if len(metadata) > services.METADATA_MAX_PAIRS:
            self.add_error(
                "description",
                f"A batch holds at most {services.METADATA_MAX_PAIRS} metadata pairs, description included.",
            )
        return metadata

    def _clean_output_expiry(self) -> int | None:
        amount = self.cleaned_data.get("output_expiry_amount")
        unit = self.cleaned_data.get("output_expiry_unit")
        if amount is None or unit not in EXPIRY_UNITS:
            return None
        seconds = amount * EXPIRY_UNITS[unit]
        if not services.OUTPUT_EXPIRY_MIN_SECONDS <= seconds <= services.OUTPUT_EXPIRY_MAX_SECONDS:
            self.add_error(
                "output_expiry_amount",
                f"Choose between {math.ceil(services.OUTPUT_EXPIRY_MIN_SECONDS / 3600)} hour and "
                f"{services.OUTPUT_EXPIRY_MAX_SECONDS // 86400} days.",
            )
            return None
        return seconds
