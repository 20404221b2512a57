"""ASGI entry point (e.g. `uvicorn dashboard.asgi:application`), with request bodies bounded as they arrive.

Django's ASGI handler reads a whole body into a temporary file before any middleware runs, so the 413 of
RequestBodyLimitMiddleware would come only after the last byte of a 200 MB upload. BoundedBodyASGIHandler applies
the same limit (batches.middleware.body_limit) first: a declared Content-Length above it is refused before anything
is read, and a body that grows past it (sent chunked, or longer than it said) is refused at the chunk that crosses
it. Either way the refusal goes through the middleware as a request with no body and the length seen, so it is the
same 413 page, logged the same way, as under WSGI.
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
django.setup(set_prefix=False)

from dashboard.bounded_asgi import BoundedBodyASGIHandler  # noqa: E402  (it needs the apps loaded)

application = BoundedBodyASGIHandler()
