"""What a response body says, per endpoint: its answer text, a one-line preview, and its token usage.

The shape is recognised from the body itself (its `object`, or the fields it carries), so a file whose lines came
from several endpoints, or an endpoint added later, never breaks a page: an unknown shape has no preview.
"""

from __future__ import annotations

import re

_WHITESPACE = re.compile(r"\s+")


def _chat_text(body: dict) -> str:
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    message = choices[0].get("message")
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str) and content:
        return content
    if isinstance(content, list):  # content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if message.get("refusal"):
        return f"Refusal: {message['refusal']}"
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        names = [str((call.get("function") or {}).get("name", "?")) for call in calls if isinstance(call, dict)]
        return "Tool call: " + ", ".join(names)
    return ""


def _responses_text(body: dict) -> str:
    if isinstance(body.get("output_text"), str):
        return body["output_text"]
    texts, calls = [], []
    for item in body.get("output") or []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict) and part.get("type") == "output_text":
                    texts.append(str(part.get("text", "")))
                elif isinstance(part, dict) and part.get("type") == "refusal":
                    texts.append(f"Refusal: {part.get('refusal', '')}")
        elif item.get("type") == "function_call":
            calls.append(str(item.get("name", "?")))
    if texts:
        return "".join(texts)
    return "Tool call: " + ", ".join(calls) if calls else ""


def _embeddings_text(body: dict) -> str:
    data = [item for item in body.get("data") or [] if isinstance(item, dict)]
    if not data:
        return ""
    vector = data[0].get("embedding")
    dimensions = f"{len(vector):,} dimensions" if isinstance(vector, list) else "base64 embedding"
    return dimensions if len(data) == 1 else f"{len(data):,} embeddings of {dimensions}"


def _moderation_text(body: dict) -> str:
    flags = []
    results = [item for item in body.get("results") or [] if isinstance(item, dict)]
    for item in results:
        categories = item.get("categories") or {}
        flags.extend(name for name, flagged in categories.items() if flagged and name not in flags)
    if not any(item.get("flagged") for item in results):
        return "not flagged"
    return "flagged: " + (", ".join(flags) if flags else "yes")


def answer_text(body) -> str:
    """The answer in words: the message, the output text, the embedding's size or the moderation flags."""
    if not isinstance(body, dict):
        return ""
    kind = body.get("object")
    if kind == "chat.completion":
        return _chat_text(body)
    if kind == "response":
        return _responses_text(body)
    if kind == "text_completion":
        choices = body.get("choices") or [{}]
        return str(choices[0].get("text", "")) if isinstance(choices[0], dict) else ""
    if kind == "list" and isinstance(body.get("data"), list):
        return _embeddings_text(body)
    if isinstance(body.get("results"), list):
        return _moderation_text(body)
    if kind == "video":
        return f"video {body.get('status', '')}".strip()
    if isinstance(body.get("data"), list) and body["data"] and isinstance(body["data"][0], dict):
        images = len(body["data"])
        return f"{images} image{'' if images == 1 else 's'}"
    return ""


def is_text_answer(body) -> bool:
    """Whether the answer is prose a person reads (chat, Responses, completions) rather than a summary of data."""
    return isinstance(body, dict) and body.get("object") in ("chat.completion", "response", "text_completion")


def one_line(text: str, length: int) -> str:
    # Only the start can show: collapsing the whitespace of a long answer whole would cost far more than it shows.
    text = _WHITESPACE.sub(" ", text[: length * 4]).strip()
    return text if len(text) <= length else text[: length - 1].rstrip() + "…"


def usage_tokens(body) -> tuple[int | None, int | None]:
    """(input, output) tokens from the body's usage, in either naming; None where it has none."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None, None
    tokens_in = usage.get("input_tokens", usage.get("prompt_tokens"))
    tokens_out = usage.get("output_tokens", usage.get("completion_tokens"))
    return _count(tokens_in), _count(tokens_out)


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31 else None


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, dict):
                parts.append(f"[{part.get('type', 'part')}]")
        return "\n".join(parts)
    return ""


def request_text(endpoint: str, body) -> str:
    """What a request asks, for a one-line preview: the last user message of a chat or Responses request (else its
    last message), the input of an embeddings or moderations request, a completion's prompt; "" otherwise."""
    if not isinstance(body, dict):
        return ""
    messages = prompt_messages(endpoint, body)
    if messages:
        users = [text for role, text in messages if role == "user"]
        return users[-1] if users else messages[-1][1]
    value = body.get("prompt") if endpoint == "/v1/completions" else body.get("input")
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " · ".join(item if isinstance(item, str) else _content_text([item]) for item in value[:20])
    return ""


def prompt_messages(endpoint: str, body) -> list[tuple[str, str]]:
    """The request's conversation as (role, text) for chat and Responses requests; empty for other endpoints."""
    if not isinstance(body, dict) or endpoint not in ("/v1/chat/completions", "/v1/responses"):
        return []
    messages = []
    if isinstance(body.get("instructions"), str):
        messages.append(("instructions", body["instructions"]))
    items = body.get("messages") if endpoint == "/v1/chat/completions" else body.get("input")
    if isinstance(items, str):
        messages.append(("user", items))
    elif isinstance(items, list):
        for item in items:
            if isinstance(item, dict) and "role" in item:
                messages.append((str(item["role"]), _content_text(item.get("content"))))
    return messages
