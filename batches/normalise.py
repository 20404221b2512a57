"""What the API sends, made storable and showable before anything reads it: the one boundary for Batch objects.

The API (or a proxy, or a compromised account) may send anything inside a well-formed JSON object. Every Batch object
passes through `batch_payload` (ApiBatch.from_api calls it, so every path that learns a batch's state does: the list,
retrieve, cancel, create, the stored payload read back). After it:

- no string holds NUL (PostgreSQL refuses "\\u0000" in jsonb and text) or a lone surrogate (not encodable in UTF-8);
- no string is longer than the column or page that shows it; a cut one ends in TRUNCATION_MARK;
- numbers are finite (jsonb refuses NaN and Infinity) and within what a 64-bit column holds; counts and tokens are
  clamped to their columns and to what their sums over every batch can hold;
- metadata is a small dict of strings, whatever was sent;
- an unknown status reads as UNKNOWN_STATUS, with the text the API sent kept in the payload for the detail page.

Objects nested deeper than MAX_DEPTH are replaced by TRUNCATION_MARK, and arrays and objects keep their first
MAX_ITEMS entries: nothing reads more, and the size of what is stored and shown is bounded.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

TRUNCATION_MARK = "…"
UNKNOWN_STATUS = "unknown"
MAX_BIGINT = 2**63 - 1
# The request count columns are 32-bit (PositiveIntegerField).
MAX_COUNT = 2**31 - 1
# A batch's tokens, far beyond any real batch (50,000 requests of a million tokens each are 5 * 10**10), and small
# enough that the sum over 100,000 batches still fits the 64-bit columns and sums the daily totals and the cost add.
MAX_TOKENS = 10**12
# The widths of the columns (batches.models.Batch) and what the detail page shows.
STATUS_LENGTH = 64
ENDPOINT_LENGTH = 64
MODEL_LENGTH = 128
COMPLETION_WINDOW_LENGTH = 32
ERROR_TEXT_LENGTH = 2000
# Any other string of the payload: error messages and fields the dashboard does not know yet.
STRING_LENGTH = 8192
METADATA_KEY_LENGTH = 64
METADATA_VALUE_LENGTH = 512
# The API allows 16 pairs; a few more are kept, since a change of that limit must not lose what a user wrote.
METADATA_PAIRS_KEPT = 64
MAX_DEPTH = 16
# Entries kept of any array or object of a payload (its longest, errors.data, holds a few lines in practice).
MAX_ITEMS = 1000

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def text(value: str, length: int = STRING_LENGTH) -> str:
    """`value` without NUL or lone surrogates, cut to `length` characters with TRUNCATION_MARK when longer."""
    if len(value) > length:
        value = value[: length - 1] + TRUNCATION_MARK
    if _UNSTORABLE.search(value):
        value = _UNSTORABLE.sub(lambda match: "" if match.group() == "\x00" else "\ufffd", value)
    return value


def integer(value: int, low: int = -MAX_BIGINT, high: int = MAX_BIGINT) -> int:
    return min(max(value, low), high)


def json_value(
    value: Any,
    depth: int = 0,
    *,
    length: int = STRING_LENGTH,
    max_depth: int = MAX_DEPTH,
    max_items: int | None = MAX_ITEMS,
) -> Any:
    """Any JSON value made storable (see the module's docstring): strings bounded to `length` and cleaned, numbers
    finite and 64-bit, containers copied with cleaned keys and at most `max_items` entries (None: all), nothing deeper
    than `max_depth`."""
    if isinstance(value, str):
        return text(value, length)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return integer(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= max_depth:
        return TRUNCATION_MARK
    limits = {"length": length, "max_depth": max_depth, "max_items": max_items}
    if isinstance(value, dict):
        key_length = min(length, METADATA_KEY_LENGTH * 4)
        pairs = itertools.islice(value.items(), max_items)
        return {text(str(key), key_length): json_value(item, depth + 1, **limits) for key, item in pairs}
    if isinstance(value, list | tuple):
        return [json_value(item, depth + 1, **limits) for item in itertools.islice(value, max_items)]
    return text(str(value), length)


def parse_int(digits: str) -> int:
    """json.loads' parse_int: an integer of any length read without Python's limit on digits (a 5,000-digit number
    would otherwise fail the whole answer) and clamped to 64 bits."""
    negative = digits.startswith("-")
    if len(digits.lstrip("-")) > 19:
        return -MAX_BIGINT if negative else MAX_BIGINT
    return integer(int(digits))


def parse_constant(name: str) -> None:
    """json.loads' parse_constant: NaN and Infinity, which no database stores in JSON, read as null."""
    return None


def number(value: Any, high: int) -> int:
    """A count or a token number clamped to [0, high]; anything that is not a number reads as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if isinstance(value, float):
        if not math.isfinite(value):
            return high if value > 0 else 0
        value = int(value)
    return integer(value, 0, high)


def status(value: Any, known: tuple[str, ...]) -> str:
    """The API's status in lower case (Azure has sent "Validating"), or UNKNOWN_STATUS when it is none of `known`;
    the text sent stays in the payload."""
    candidate = value.lower() if isinstance(value, str) else ""
    return candidate if candidate in known else UNKNOWN_STATUS


def metadata(value: Any) -> dict[str, str]:
    """Metadata as the API defines it, whatever was sent: a dict of at most METADATA_PAIRS_KEPT string pairs, keys and
    values bounded; anything else is {}. Pairs whose value is null are left out."""
    if not isinstance(value, dict):
        return {}
    pairs = {}
    for key, item in value.items():
        if item is None:
            continue
        if len(pairs) >= METADATA_PAIRS_KEPT:
            break
        item = item if isinstance(item, str) else str(item)[: METADATA_VALUE_LENGTH + 1]
        pairs[text(str(key), METADATA_KEY_LENGTH)] = text(item, METADATA_VALUE_LENGTH)
    return pairs


_FIELD_LENGTHS = {
    "status": STATUS_LENGTH,
    "endpoint": ENDPOINT_LENGTH,
    "model": MODEL_LENGTH,
    "completion_window": COMPLETION_WINDOW_LENGTH,
}


_ID_FIELDS = ("id", "input_file_id", "output_file_id", "error_file_id")


def batch_payload(data: dict) -> dict:
    """A Batch object as it may be stored and parsed: every value made storable, the fields with columns bounded to
    them, metadata made a dict of strings. The result is stable: cleaning it again changes nothing."""
    cleaned = json_value(data)
    for name in _ID_FIELDS:
        # An id is checked against its pattern after this: a NUL made U+FFFD fails it, where a NUL dropped could turn
        # "batch_a\x00b" into another batch's id.
        if isinstance(data.get(name), str):
            cleaned[name] = text(data[name].replace("\x00", "\ufffd"))
    for name, length in _FIELD_LENGTHS.items():
        if isinstance(cleaned.get(name), str):
            cleaned[name] = text(cleaned[name], length)
    if "metadata" in cleaned:
        cleaned["metadata"] = metadata(cleaned["metadata"]) if cleaned["metadata"] is not None else None
    errors = cleaned.get("errors")
    if isinstance(errors, dict) and isinstance(errors.get("data"), list):
        for error in errors["data"]:
            if isinstance(error, dict):
                for key in ("code", "message", "param"):
                    if isinstance(error.get(key), str):
                        error[key] = text(error[key], ERROR_TEXT_LENGTH)
    return cleaned
