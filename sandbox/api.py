"""The API's JSON shapes in one place: Batch, File, list and error objects, and the error the views turn into one.

A Batch's null fields follow the reference's fixtures (REFERENCE §3.1): `model`, `usage` and `request_counts.total`
appear once validation has passed (a failed batch reports zero usage), `errors` only on a failed batch, and the
result file ids only on a terminal batch. A missing file id is always null: some live payloads send "" instead
(REFERENCE §3.2); the sandbox does not, so the dashboard's handling of "" is tested with hand-built payloads.
"""

from __future__ import annotations

from sandbox.simulation import State


class ApiError(Exception):
    """An error answered with OpenAI's envelope {"error": {message, type, param, code}}."""

    def __init__(self, status, message, *, type="invalid_request_error", param=None, code=None, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_json(self.message, self.type, self.param, self.code)


def error_json(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def batch_json(batch, state: State) -> dict:
    """A Batch object (REFERENCE §3.1), keys in the order the API sends them."""
    files_visible = state.is_terminal and batch.results_ready
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": state.model,
        "errors": {"object": "list", "data": list(state.errors)} if state.errors else None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": state.status,
        "output_file_id": (batch.output_file_id or None) if files_visible else None,
        "error_file_id": (batch.error_file_id or None) if files_visible else None,
        "created_at": state.created_at,
        "in_progress_at": state.timestamps["in_progress_at"],
        "expires_at": state.expires_at,
        "finalizing_at": state.timestamps["finalizing_at"],
        "completed_at": state.timestamps["completed_at"],
        "failed_at": state.timestamps["failed_at"],
        "expired_at": state.timestamps["expired_at"],
        "cancelling_at": state.timestamps["cancelling_at"],
        "cancelled_at": state.timestamps["cancelled_at"],
        "request_counts": {"total": state.total, "completed": state.completed, "failed": state.failed},
        "usage": state.usage,
        "metadata": batch.metadata,
    }


def file_json(file) -> dict:
    """A File object (REFERENCE §3.3). `status` is deprecated but still required; files are always processed."""
    return {
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": file.created_at,
        "expires_at": file.expires_at,
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "status_details": None,
    }


def list_json(data: list[dict], has_more: bool) -> dict:
    """A cursor page. On an empty page first_id/last_id are null (the files schema marks them required strings)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def deleted_json(file_id: str) -> dict:
    return {"id": file_id, "object": "file", "deleted": True}
