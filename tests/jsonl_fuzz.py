"""A seeded generator of JSONL input files, valid and broken in the ways uploads break, for the fuzz tests.

Every file is (kind, content, surely_invalid): `surely_invalid` files must be refused by any validator. The whole
corpus goes through each validator directly; `sample()` is the part that also goes through HTTP.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

SEED = 20261127
FILES = 1000
# The files that go through a view or an HTTP API as well: every kind at least once (SAMPLE >= the number of kinds).
SAMPLE = 50
CHAT = "/v1/chat/completions"
# The files with a line over the validators' 10 MB cap (1 in 100): each costs ~11 MB to build.
HUGE_EVERY = 100
HUGE_LINE_BYTES = 10 * 1024 * 1024 + 4096
# Nesting up to this deep: far past what json's parser recurses into, so a validator must survive RecursionError.
MAX_DEPTH = 100_000


def _request(rng: random.Random, number: int, **changes) -> dict:
    request = {
        "custom_id": f"req-{number}-{rng.randrange(10**6)}",
        "method": "POST",
        "url": CHAT,
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Question {number}"}]},
    }
    request.update(changes)
    return request


def _lines(rng: random.Random, count: int) -> list[bytes]:
    return [json.dumps(_request(rng, n)).encode() for n in range(1, count + 1)]


def _join(lines: list[bytes], ending: bytes = b"\n") -> bytes:
    return b"".join(line + ending for line in lines)


def _bad_utf8(rng, lines):
    index = rng.randrange(len(lines))
    cut = rng.randrange(1, len(lines[index]))
    # An encoded surrogate (ED A0 80) passes json.loads(bytes), which decodes with surrogatepass.
    junk = rng.choice([b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
    lines[index] = lines[index][:cut] + junk + lines[index][cut:]
    return _join(lines), True


def _huge_line(rng, lines):
    body = {"model": "gpt-4o-mini", "input": "x" * HUGE_LINE_BYTES}
    lines.insert(rng.randrange(len(lines) + 1), json.dumps(_request(rng, 0, body=body)).encode())
    return _join(lines), True


def _long_line(rng, lines):
    request = _request(rng, 0)
    request["body"]["messages"][0]["content"] = "y" * rng.randrange(10_000, 1_000_000)
    lines.insert(rng.randrange(len(lines) + 1), json.dumps(request).encode())
    return _join(lines), False


def _deep_nesting(rng, lines):
    depth = rng.randrange(50, MAX_DEPTH)
    opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
    nested = (
        b'{"custom_id": "deep", "method": "POST", "url": "' + CHAT.encode() + b'", "body": {"model": "gpt-4o-mini", '
    )
    nested += b'"x": ' + opener * depth + b"1" + closer * depth + b"}}"
    lines.insert(rng.randrange(len(lines) + 1), nested)
    return _join(lines), False  # valid JSON when shallow enough for the parser


def _nul_bytes(rng, lines):
    index = rng.randrange(len(lines))
    cut = rng.randrange(1, len(lines[index]))
    lines[index] = lines[index][:cut] + b"\x00" + lines[index][cut:]
    return _join(lines), True  # a raw NUL is invalid JSON inside a string and outside one


def _escaped_nul(rng, lines):
    lines[0] = json.dumps(_request(rng, 0, custom_id="nul\u0000id")).encode()
    return _join(lines), False


def _duplicate_ids(rng, lines):
    if len(lines) < 2:
        lines.append(lines[0])
    else:
        lines[rng.randrange(1, len(lines))] = lines[0]
    return _join(lines), True


def _bom(rng, lines):
    return b"\xef\xbb\xbf" + _join(lines), True


def _crlf(rng, lines):
    return _join(lines, b"\r\n"), False


def _blank_lines_inside(rng, lines):
    lines.insert(rng.randrange(1, len(lines) + 1) if len(lines) > 1 else 1, rng.choice([b"", b"   ", b"\t"]))
    lines.append(b"x")  # a request after the blank line, so the blank is inside the file
    return _join(lines), True


def _trailing_blank_lines(rng, lines):
    return _join(lines) + b"\n" * rng.randrange(1, 4), False


def _empty(rng, lines):
    return rng.choice([b"", b"\n", b"\n\n", b"\r\n"]), True


def _not_objects(rng, lines):
    lines[rng.randrange(len(lines))] = rng.choice([b"[]", b"1", b'"text"', b"null", b"NaN", b"{", b"}{"])
    return _join(lines), True


def _valid(rng, lines):
    return _join(lines), False


def corpus() -> Iterator[tuple[str, bytes, bool]]:
    """FILES files from SEED, always the same ones."""
    rng = random.Random(SEED)
    kinds = [
        _bad_utf8,
        _long_line,
        _nul_bytes,
        _escaped_nul,
        _duplicate_ids,
        _bom,
        _crlf,
        _blank_lines_inside,
        _trailing_blank_lines,
        _empty,
        _not_objects,
        _valid,
        _deep_nesting,
    ]
    for number in range(FILES):
        lines = _lines(rng, rng.randrange(1, 8))
        make = _huge_line if number % HUGE_EVERY == HUGE_EVERY - 1 else rng.choice(kinds)
        content, invalid = make(rng, lines)
        yield make.__name__.strip("_"), content, invalid


def sample() -> list[tuple[int, str, bytes, bool]]:
    """SAMPLE files of the corpus with their numbers: the first of each kind, then the next in corpus order."""
    chosen, seen_kinds, rest = [], set(), []
    for number, (kind, content, invalid) in enumerate(corpus()):
        if kind not in seen_kinds:
            seen_kinds.add(kind)
            chosen.append((number, kind, content, invalid))
        elif len(rest) < SAMPLE and kind != "huge_line":
            rest.append((number, kind, content, invalid))
    return sorted(chosen + rest[: SAMPLE - len(chosen)])
