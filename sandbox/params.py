"""Checking request parameters as the API does: ApiErrors with its messages, `param` paths and codes.

Messages and codes follow the live API where they are known (REFERENCE §2.6, §9 and the examples). Choices where the
reference is silent: an unknown field is rejected, in a multipart upload (CreateFileRequest has
`additionalProperties: false`) and in POST /batches alike (CreateBatchRequest does not say; the live API rejects
unknown parameters on its other endpoints, with the wording used here), so a client sending a field the API does
not know fails here first; a float where an integer is expected is an `invalid_type`.
"""

from __future__ import annotations

import contextlib
import json

from sandbox.api import ApiError
from sandbox.rules import (
    COMPLETION_WINDOW,
    ENDPOINTS,
    EXPIRY_MAX_SECONDS,
    EXPIRY_MIN_SECONDS,
    METADATA_MAX_KEY_LENGTH,
    METADATA_MAX_PAIRS,
    METADATA_MAX_VALUE_LENGTH,
    UPLOAD_PURPOSES,
)

# The SDK sends nested form fields with brackets; Azure's examples use dots. Both are accepted.
UPLOAD_FIELDS = (
    "purpose",
    "expires_after[anchor]",
    "expires_after[seconds]",
    "expires_after.anchor",
    "expires_after.seconds",
)
BATCH_FIELDS = ("input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after")
INVALID_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library "
    "correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
)


def unknown_parameter(name: str) -> ApiError:
    # The live API's wording for an unexpected parameter (seen on chat completions and responses).
    return ApiError(400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")


def missing(name: str) -> ApiError:
    return ApiError(400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")


def int_param(query, name: str, default: int, minimum: int, maximum: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(
            400, f"Invalid '{name}': expected an integer, but got '{raw}' instead.", param=name, code="invalid_type"
        ) from None
    _check_range(name, value, minimum, maximum)
    return value


def _check_range(name: str, value: int, minimum: int, maximum: int) -> None:
    if value < minimum:
        raise ApiError(
            400,
            f"Invalid '{name}': integer below minimum value. Expected a value >= {minimum}, but got {value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    if value > maximum:
        raise ApiError(
            400,
            f"Invalid '{name}': integer above maximum value. Expected a value <= {maximum}, but got {value} instead.",
            param=name,
            code="integer_above_max_value",
        )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_name(value) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}.get(
        type(value), "an object"
    )


def invalid_value(name: str, value, allowed) -> ApiError:
    choices = ", ".join(f"'{choice}'" for choice in allowed)
    return ApiError(
        400,
        f"Invalid value: {json.dumps(value)}. Supported values are: {choices}.",
        param=name,
        code="invalid_value",
    )


def expiry_seconds(name: str, anchor, seconds) -> int | None:
    """Seconds of an expires_after / output_expires_after policy, or None when none was given."""
    if anchor is None and seconds is None:
        return None
    if anchor is None:
        raise missing(f"{name}.anchor")
    if anchor != "created_at":
        raise invalid_value(f"{name}.anchor", anchor, ["created_at"])
    if seconds is None:
        raise missing(f"{name}.seconds")
    if isinstance(seconds, str):
        with contextlib.suppress(ValueError):
            seconds = int(seconds)  # multipart fields are strings
    if not _is_int(seconds):
        raise ApiError(
            400,
            f"Invalid type for '{name}.seconds': expected an integer, but got {_type_name(seconds)} instead.",
            param=f"{name}.seconds",
            code="invalid_type",
        )
    _check_range(f"{name}.seconds", seconds, EXPIRY_MIN_SECONDS, EXPIRY_MAX_SECONDS)
    return seconds


def check_metadata(metadata) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise ApiError(
            400,
            f"Invalid type for 'metadata': expected an object, but got {_type_name(metadata)} instead.",
            param="metadata",
            code="invalid_type",
        )
    if len(metadata) > METADATA_MAX_PAIRS:
        raise ApiError(
            400,
            f"Invalid 'metadata': too many properties. Expected an object with at most {METADATA_MAX_PAIRS} "
            f"properties, but got an object with {len(metadata)} properties instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > METADATA_MAX_KEY_LENGTH:
            raise ApiError(
                400,
                f"Invalid 'metadata': property name too long. Expected a property name with at most "
                f"{METADATA_MAX_KEY_LENGTH} characters, but got a property name with {len(key)} characters instead.",
                param="metadata",
                code="property_name_above_max_length",
            )
        if not isinstance(value, str):
            raise ApiError(
                400,
                f"Invalid type for 'metadata.{key}': expected a string, but got {_type_name(value)} instead.",
                param=f"metadata.{key}",
                code="invalid_type",
            )
        if len(value) > METADATA_MAX_VALUE_LENGTH:
            raise ApiError(
                400,
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum length "
                f"{METADATA_MAX_VALUE_LENGTH}, but got a string with length {len(value)} instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )


def upload_fields(fields) -> tuple[str, int | None]:
    """The purpose and expires_after seconds of a multipart upload."""
    # A `file` sent as a plain form field rather than a file is reported as the missing file, by the caller.
    unknown = [name for name in fields if name not in UPLOAD_FIELDS and name != "file"]
    if "expires_after" in unknown:
        raise ApiError(
            400,
            "Invalid 'expires_after': in a multipart upload, send it as two form fields, expires_after[anchor] "
            "(created_at) and expires_after[seconds] (an integer), not as one part holding a JSON object.",
            param="expires_after",
            code="invalid_type",
        )
    if unknown:
        raise unknown_parameter(unknown[0])
    purpose = fields.get("purpose")
    if not purpose:
        raise missing("purpose")
    if purpose not in UPLOAD_PURPOSES:
        raise invalid_value("purpose", purpose, UPLOAD_PURPOSES)
    expires_after = expiry_seconds(
        "expires_after",
        fields.get("expires_after[anchor]", fields.get("expires_after.anchor")),
        fields.get("expires_after[seconds]", fields.get("expires_after.seconds")),
    )
    return purpose, expires_after


def batch_request(raw_body: bytes) -> dict:
    """The checked body of POST /batches: input_file_id, endpoint, metadata, output_expires_after (seconds)."""
    try:
        body = json.loads(raw_body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, INVALID_JSON_MESSAGE) from None
    if not isinstance(body, dict):
        raise ApiError(400, INVALID_JSON_MESSAGE)
    unknown = [name for name in body if name not in BATCH_FIELDS]
    if unknown:
        raise unknown_parameter(unknown[0])
    for name in ("input_file_id", "endpoint", "completion_window"):
        if body.get(name) is None:
            raise missing(name)
        if not isinstance(body[name], str):
            raise ApiError(
                400,
                f"Invalid type for '{name}': expected a string, but got {_type_name(body[name])} instead.",
                param=name,
                code="invalid_type",
            )
    if body["endpoint"] not in ENDPOINTS:
        raise invalid_value("endpoint", body["endpoint"], ENDPOINTS)
    if body["completion_window"] != COMPLETION_WINDOW:
        raise invalid_value("completion_window", body["completion_window"], [COMPLETION_WINDOW])
    check_metadata(body.get("metadata"))
    policy = body.get("output_expires_after")
    if policy is not None and not isinstance(policy, dict):
        raise ApiError(
            400,
            f"Invalid type for 'output_expires_after': expected an object, but got {_type_name(policy)} instead.",
            param="output_expires_after",
            code="invalid_type",
        )
    return {
        "input_file_id": body["input_file_id"],
        "endpoint": body["endpoint"],
        "metadata": body.get("metadata"),
        "output_expires_after": expiry_seconds(
            "output_expires_after", (policy or {}).get("anchor"), (policy or {}).get("seconds")
        ),
    }
