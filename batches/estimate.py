"""What a batch will cost, estimated before it is sent: input tokens counted line by line while the upload is
validated, output tokens bounded by each request's max_tokens, priced with the Batch price table.

Tokens are counted with tiktoken from encoding files in a local directory (TIKTOKEN_CACHE_DIR) and never downloaded:
servers and offline installs have no network, and a create page must not wait on one. Without the files the count
is estimated from the text's length, and the page says so.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import threading
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import tiktoken
import tiktoken.model
from django.conf import settings

from batches.pricing import Price, price_for

DEFAULT_ENCODING = "o200k_base"
# Where tiktoken downloads each encoding from: its cache names a file by the SHA-1 of this URL.
ENCODING_URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}
# The split patterns and special tokens of tiktoken_ext/openai_public.py (tiktoken 0.14.0, pinned); a test checks
# that they still match the installed tiktoken. Needed because tiktoken's own constructors download their files.
PATTERNS = {
    "o200k_base": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
    "cl100k_base": (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
        r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
    ),
}
SPECIAL_TOKENS = {
    "o200k_base": {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    "cl100k_base": {
        "<|endoftext|>": 100257,
        "<|fim_prefix|>": 100258,
        "<|fim_middle|>": 100259,
        "<|fim_suffix|>": 100260,
        "<|endofprompt|>": 100276,
    },
}
# The length estimate: about four bytes of UTF-8 per token. That is four characters of English; CJK text, at three
# bytes a character, comes out at three quarters of a token per character, near what it tokenizes to.
BYTES_PER_TOKEN = 4
# Chat formatting: each message costs a few tokens besides its text, and the reply is primed with a few more.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3
# Body keys whose text the model reads; anything else (model, metadata, sampling settings) is not input.
TEXT_KEYS = ("messages", "input", "prompt", "instructions")
# Body keys whose JSON is rendered into the prompt (tool and output schemas): counted as their compact JSON.
SCHEMA_KEYS = ("tools", "functions", "response_format", "text", "tool_choice")
# Parts the tokenizer cannot count from text: their tokens depend on the image's or file's size.
MEDIA_KEYS = frozenset({"image_url", "input_image", "image", "file", "file_data", "file_id", "input_audio", "audio"})
OUTPUT_LIMIT_KEYS = ("max_completion_tokens", "max_output_tokens", "max_tokens")
# Endpoints that produce no output tokens: their requests need no max_tokens for the bound.
NO_OUTPUT_ENDPOINTS = ("/v1/embeddings", "/v1/moderations")

_loaded: dict[tuple[str, float], tiktoken.Encoding] = {}
_loading = threading.Lock()


# --- The tokenizer ------------------------------------------------------------


def encoding_name_for(model: str | None) -> str:
    """The encoding tiktoken uses for `model`; the current models' one when tiktoken does not know the model."""
    try:
        name = tiktoken.model.encoding_name_for_model(model or "")
    except KeyError:
        return DEFAULT_ENCODING
    return name if name in ENCODING_URLS else DEFAULT_ENCODING


def encoding_file(name: str, directory: str | Path | None = None) -> Path | None:
    """The encoding's file in the tokenizer directory: as tiktoken's cache names it (the SHA-1 of its URL), or as
    `<name>.tiktoken`. None when the directory is not configured or holds neither."""
    directory = settings.TIKTOKEN_CACHE_DIR if directory is None else directory
    if not directory:
        return None
    cache_name = hashlib.sha1(ENCODING_URLS[name].encode()).hexdigest()  # noqa: S324 - tiktoken's file naming
    for candidate in (Path(directory) / cache_name, Path(directory) / f"{name}.tiktoken"):
        if candidate.is_file():
            return candidate
    return None


def load_encoding(name: str) -> tiktoken.Encoding | None:
    """The encoding from its local file, loaded once per process (and again if the file changes); None without
    the file or when it is not a tiktoken file. Never downloads."""
    path = encoding_file(name)
    if path is None:
        return None
    try:
        key = (str(path), path.stat().st_mtime)
    except OSError:
        return None
    with _loading:
        if key not in _loaded:
            ranks = _read_ranks(path)
            if ranks is None:
                return None
            _loaded[key] = tiktoken.Encoding(
                name, pat_str=PATTERNS[name], mergeable_ranks=ranks, special_tokens=SPECIAL_TOKENS[name]
            )
        return _loaded[key]


def _read_ranks(path: Path) -> dict[bytes, int] | None:
    """tiktoken's file format: one `<base64 token> <rank>` per line. Read here rather than with tiktoken's loader,
    which would copy the file into its own cache directory."""
    ranks = {}
    try:
        with path.open("rb") as handle:
            for line in handle:
                if line.strip():
                    token, rank = line.split()
                    ranks[base64.b64decode(token, validate=True)] = int(rank)
    except (OSError, ValueError):
        return None
    # BPE starts from single bytes: a file without all 256 of them cannot encode arbitrary text.
    return ranks if ranks and all(bytes([b]) in ranks for b in range(256)) else None


# --- Counting -----------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """The estimated cost of an input file, in tokens and (when the model has a price) in dollars."""

    model: str | None
    encoding: str  # the tiktoken encoding counted with, or "" when estimated from the text's length
    requests: int
    input_tokens: int
    output_tokens_bound: int  # the most the requests that set a limit can answer with
    unbounded_requests: int  # requests with no output limit: their answers' length has no bound
    media_parts: int  # images, files and audio, whose tokens are not counted
    price: Price | None

    @property
    def exact(self) -> bool:
        return bool(self.encoding)

    @property
    def input_cost(self) -> Decimal | None:
        return None if self.price is None else self.price.cost(self.input_tokens, 0, 0)

    @property
    def output_cost_bound(self) -> Decimal | None:
        return None if self.price is None else self.price.cost(0, 0, self.output_tokens_bound)

    @property
    def max_cost(self) -> Decimal | None:
        """Inputs plus every bounded answer at its full limit; None when no price is known."""
        if self.price is None:
            return None
        return self.price.cost(self.input_tokens, 0, self.output_tokens_bound)


class InputCounter:
    """Counts an input file's tokens one request at a time, as the validation reads it (nothing is kept per line).

    The tokenizer is the one of the first model named, loaded when that line arrives.
    """

    def __init__(self, endpoint: str | None = None):
        self.endpoint = endpoint
        self.model: str | None = None
        self.encoding: tiktoken.Encoding | None = None
        self.requests = self.input_tokens = self.output_tokens_bound = 0
        self.unbounded_requests = self.media_parts = 0
        self._started = False

    def add(self, request: dict) -> None:
        body = request.get("body")
        if not isinstance(body, dict):
            return
        if not self._started:
            self._started = True
            self.model = body.get("model") if isinstance(body.get("model"), str) else None
            self.endpoint = self.endpoint or (request.get("url") if isinstance(request.get("url"), str) else None)
            self.encoding = load_encoding(encoding_name_for(self.model))
        self.requests += 1
        self.input_tokens += self._input_tokens(body)
        limit = _output_limit(body)
        if limit is not None:
            self.output_tokens_bound += limit
        elif self.endpoint not in NO_OUTPUT_ENDPOINTS:
            self.unbounded_requests += 1

    def result(self) -> Estimate:
        return Estimate(
            model=self.model,
            encoding=self.encoding.name if self.encoding else "",
            requests=self.requests,
            input_tokens=self.input_tokens,
            output_tokens_bound=self.output_tokens_bound,
            unbounded_requests=self.unbounded_requests,
            media_parts=self.media_parts,
            price=price_for(self.model),
        )

    def _input_tokens(self, body: dict) -> int:
        texts: list[str] = []
        tokens = 0
        for key in TEXT_KEYS:
            if key in body:
                tokens += self._collect(body[key], texts)
        messages = body.get("messages") if isinstance(body.get("messages"), list) else None
        items = body.get("input") if isinstance(body.get("input"), list) else None
        if messages is not None:
            tokens += TOKENS_PER_MESSAGE * len(messages) + TOKENS_PER_REPLY
        elif items is not None and all(isinstance(item, dict) for item in items):
            tokens += TOKENS_PER_MESSAGE * len(items) + TOKENS_PER_REPLY
        for key in SCHEMA_KEYS:
            value = body.get(key)
            if isinstance(value, dict | list):
                texts.append(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
        return tokens + sum(self._count(text) for text in texts)

    def _collect(self, value, texts: list[str]) -> int:
        """Gather the strings of a prompt into `texts`; returns tokens given directly (arrays of token ids)."""
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            if value and all(isinstance(item, int) and not isinstance(item, bool) for item in value):
                return len(value)  # A prompt already tokenized (embeddings, completions).
            return sum(self._collect(item, texts) for item in value)
        elif isinstance(value, dict):
            tokens = 0
            for key, item in value.items():
                if key in MEDIA_KEYS:
                    self.media_parts += 1
                elif key not in ("type", "id", "status"):
                    tokens += self._collect(item, texts)
            return tokens
        return 0

    def _count(self, text: str) -> int:
        if not text:
            return 0
        if self.encoding is not None:
            return len(self.encoding.encode_ordinary(text))
        return math.ceil(len(text.encode("utf-8", "surrogatepass")) / BYTES_PER_TOKEN)


def _output_limit(body: dict) -> int | None:
    """The most tokens this request can answer with: its limit times the number of choices; None without a limit."""
    for key in OUTPUT_LIMIT_KEYS:
        limit = body.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            choices = body.get("n")
            return limit * (
                choices if isinstance(choices, int) and not isinstance(choices, bool) and choices > 1 else 1
            )
    return None
