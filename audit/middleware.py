"""The request being answered, for audit records made where no request is passed (model signals on accounts)."""

from __future__ import annotations

from contextvars import ContextVar

_current_request: ContextVar = ContextVar("audit_current_request", default=None)


def current_request():
    """The request this thread or task is answering; None in a management command, a task or the sync loop."""
    return _current_request.get()


class CurrentRequestMiddleware:
    """Listed after AuthenticationMiddleware, so the audit knows who changed an account, and from where."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = _current_request.set(request)
        try:
            return self.get_response(request)
        finally:
            _current_request.reset(token)
