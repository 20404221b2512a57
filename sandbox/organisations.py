"""The sandbox's two organisations, each known by its public key, and the ids each gives the objects it creates.

Every batch and file belongs to the organisation whose key created it, and only that organisation sees it: another
organisation's id answers the same 404 as an unknown one, as on the real API. The ids of the organisations are
fixed (stored with each object); their keys and id styles come from settings at request time, so tests can change
them.

Id styles: "openai" makes ids like the API's (`batch_<hex time><hex>`, `file-<22 letters and digits>`); "gateway"
makes ids like those of LiteLLM's managed files: a description of the upstream object, base64url-encoded with its
`=` padding, 180-230 characters of letters, digits, `-`, `_` and `=` (never `/`, so an id stays one path segment,
and under 255 bytes, since a file's bytes are stored under its id).
"""

from __future__ import annotations

import base64
import secrets
import string
import uuid

from django.conf import settings
from django.utils.crypto import constant_time_compare

FIRST = "org-sandbox"
SECOND = "org-sandbox-second"
# What every gateway-style file id starts with: the base64url of "litellm_prox" (whole 3-byte groups encode alike).
GATEWAY_FILE_ID_PREFIX = base64.urlsafe_b64encode(b"litellm_prox").decode()


def by_key(key: str) -> str | None:
    """The organisation whose key this is, or None. Every key is compared, in constant time."""
    found = None
    for organisation, organisation_key in (
        (FIRST, settings.SANDBOX_API_KEY),
        (SECOND, settings.SANDBOX_SECOND_API_KEY),
    ):
        if constant_time_compare(key, organisation_key):
            found = organisation
    return found


def id_style(organisation: str) -> str:
    return settings.SANDBOX_SECOND_ID_STYLE if organisation == SECOND else settings.SANDBOX_ID_STYLE


def new_file_id(organisation: str) -> str:
    alphabet = string.ascii_letters + string.digits
    upstream_id = "file-" + "".join(secrets.choice(alphabet) for _ in range(22))
    if id_style(organisation) != "gateway":
        return upstream_id
    return _encoded(
        f"litellm_proxy:application/octet-stream;unified_id,{uuid.uuid4()};target_model_names,gpt-4o-mini-batch;"
        f"llm_file_id,{upstream_id}"
    )


def new_batch_id(organisation: str, created: float) -> str:
    # Like OpenAI's ids: a hex timestamp, then random hex.
    upstream_id = f"batch_{int(created):08x}{secrets.token_hex(12)}"
    if id_style(organisation) != "gateway":
        return upstream_id
    return _encoded(f"litellm_proxy;model_id:{secrets.token_hex(32)};llm_batch_id:{upstream_id}")


def _encoded(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()
