"""What each request of a batch "returns": deterministic outcomes and response bodies shaped like the real endpoints.

Everything here depends only on the request line, its attempt and the batch id (for ids), so counts computed at
creation and the result files written later always agree. About 3% of requests fail, chosen by a hash of the
custom_id, as HTTP-level failures (REFERENCE §7: `response.status_code` >= 400, the error envelope in
`response.body`, top-level `error` null). A content error (400) is permanent: every attempt fails it again. A server
error (500) is transient: a later attempt at the line (a retry, see `attempt_of`) fails again only at
RETRY_FAILURE_PER_MILLE, seeded by the custom_id and the attempt. A chat request asking for more completion tokens
than the model allows fails like the live API.

Simplifications: embeddings are 16-dimensional unless the request asks for `dimensions` (real ones have 1536 or
3072, which would make demo output files huge); token counts are estimated as one token per four characters.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass

FAILURE_PER_MILLE = 30
# A retried line that failed with a transient server error fails again at this rate.
RETRY_FAILURE_PER_MILLE = 50
# Metadata that makes a batch a later attempt at its lines: the sandbox's stand-in for the API's own randomness, so
# that a retry's outcome is transient yet repeatable (the same custom_id and attempt always end the same way).
ATTEMPT_KEY = "batchboard_attempt"
RETRY_OF_KEY = "batchboard_retry_of"
DEFAULT_EMBEDDING_DIMENSIONS = 16
MAX_EMBEDDING_DIMENSIONS = 3072

SNAPSHOTS = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "gpt-5": "gpt-5-2025-08-07",
    "gpt-5-mini": "gpt-5-mini-2025-08-07",
    "gpt-5-nano": "gpt-5-nano-2025-08-07",
    "o3": "o3-2025-04-16",
    "o4-mini": "o4-mini-2025-04-16",
    "gpt-3.5-turbo-instruct": "gpt-3.5-turbo-instruct",
    "omni-moderation-latest": "omni-moderation-2024-09-26",
}
DEFAULT_MODELS = {
    "/v1/moderations": "omni-moderation-latest",
    "/v1/images/generations": "dall-e-2",
    "/v1/images/edits": "dall-e-2",
    "/v1/videos": "sora-2",
}
MAX_COMPLETION_TOKENS = {"gpt-4.1": 32_768, "gpt-4.1-mini": 32_768, "gpt-4.1-nano": 32_768, "gpt-5": 128_000}
REASONING_MODELS = ("gpt-5", "o3", "o4")

REPLIES = (
    "Sure. Here is a short, direct answer to your request.",
    "Based on the information given, the most likely answer is the first option.",
    "The text is positive in tone and mentions delivery speed and product quality.",
    "Category: billing. Priority: normal. The customer asks for a copy of last month's invoice.",
    "In summary, the document describes a quarterly plan with three goals and a fixed budget.",
    "Yes. The statement is consistent with the provided context.",
    "Paris.",
    "Buenos días.",
    "144",
    "A calm lake at dawn, mist rising over still water.",
    "In HTML a line break is written <br>, as in:\n\n    <p>first line<br>second line</p>",
)
# A request allowing at least this many completion tokens gets a long answer of several paragraphs, as models
# given room tend to write: between a third and two thirds of the allowance.
LONG_ANSWER_TOKENS = 256
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


@dataclass(frozen=True)
class Outcome:
    """How one request ended: a status code, an error (for failures), token usage and the reply text."""

    status_code: int
    error: dict | None = None
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    text: str = ""
    finish_reason: str = "stop"

    @property
    def succeeded(self) -> bool:
        return self.status_code < 400

    @property
    def usage_row(self) -> tuple[bool, int, int, int, int]:
        return (self.succeeded, self.input_tokens, self.cached_tokens, self.output_tokens, self.reasoning_tokens)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _number(*parts: str) -> int:
    return int(_digest(*parts)[:12], 16)


def snapshot(model: str) -> str:
    """The dated model snapshot the API reports for a requested model name."""
    return SNAPSHOTS.get(model, model)


def request_model(endpoint: str, body: dict) -> str | None:
    model = body.get("model")
    if isinstance(model, str) and model:
        return model
    return DEFAULT_MODELS.get(endpoint)


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _text_of(value) -> str:
    """The text inside a prompt, whatever its shape (string, content parts, message lists)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text_of(item) for item in value)
    if isinstance(value, dict):
        return " ".join(_text_of(value.get(key)) for key in ("content", "text", "input_text") if key in value)
    return ""


def _http_error(status: int, message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"status": status, "error": {"message": message, "type": type_, "param": param, "code": code}}


def _request_error(endpoint: str, model: str, body: dict) -> dict | None:
    """A 4xx the real endpoint would answer for this body, if any."""
    required = {
        "/v1/chat/completions": "messages",
        "/v1/embeddings": "input",
        "/v1/responses": "input",
        "/v1/completions": "prompt",
        "/v1/moderations": "input",
        "/v1/images/generations": "prompt",
        "/v1/images/edits": "prompt",
        "/v1/videos": "prompt",
    }.get(endpoint)
    if required and required not in body:
        return _http_error(
            400,
            f"Missing required parameter: '{required}'.",
            "invalid_request_error",
            required,
            "missing_required_parameter",
        )
    if endpoint == "/v1/chat/completions":
        for name in ("max_tokens", "max_completion_tokens"):
            asked = body.get(name)
            limit = MAX_COMPLETION_TOKENS.get(model, 16_384)
            if isinstance(asked, int) and asked > limit:
                return _http_error(
                    400,
                    f"{name} is too large: {asked}. This model supports at most {limit} completion tokens, "
                    f"whereas you provided {asked}.",
                    "invalid_request_error",
                    name,
                    "invalid_value",
                )
    return None


def attempt_of(metadata: dict | None) -> int:
    """Which attempt at its lines a batch is: 0 for a first batch, its `batchboard_attempt` (or 1) for a retry."""
    metadata = metadata or {}
    try:
        attempt = int(str(metadata.get(ATTEMPT_KEY, "")).strip())
    except ValueError:
        attempt = 0
    if attempt < 1 and metadata.get(RETRY_OF_KEY):
        attempt = 1
    return max(0, min(attempt, 1000))


def _random_failure(custom_id: str, attempt: int = 0) -> dict | None:
    roll = _number("fail", custom_id) % 1000
    if roll >= FAILURE_PER_MILLE:
        return None
    if roll % 3 == 0:
        return _http_error(
            400,
            "This model's maximum context length is 128000 tokens. However, your messages resulted in 131072 "
            "tokens. Please reduce the length of the messages.",
            "invalid_request_error",
            "messages",
            "context_length_exceeded",
        )
    if attempt and _number("transient", custom_id, str(attempt)) % 1000 >= RETRY_FAILURE_PER_MILLE:
        return None
    return _http_error(
        500,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
    )


def dropped(batch_id: str, custom_id: str, rate: float) -> bool:
    """Whether a request line is left out of both result files (the SANDBOX_DROP_RATE fault): a "missing" line.

    Chosen by a hash, so the same lines go missing however often the files are written.
    """
    return rate > 0 and _number("drop", batch_id, custom_id) % 1_000_000 < rate * 1_000_000


def line_outcome(
    endpoint: str, custom_id: str, body: dict, *, attempt: int = 0, force_failure: bool = False
) -> Outcome:
    """The deterministic outcome of one request line (already validated: body is a dict) at an attempt."""
    model = request_model(endpoint, body) or ""
    failure = _request_error(endpoint, model, body) or _random_failure(custom_id, attempt)
    if failure is None and force_failure:
        failure = _http_error(500, "The server had an error while processing your request.", "server_error")
    if failure:
        return Outcome(status_code=failure["status"], error=failure["error"])

    if endpoint == "/v1/chat/completions":
        prompt = _text_of(body.get("messages"))
        overhead = 3 + 4 * len(body["messages"]) if isinstance(body["messages"], list) else 3
        input_tokens = estimate_tokens(prompt) + overhead
    elif endpoint == "/v1/responses":
        input_tokens = estimate_tokens(_text_of(body.get("input")) + " " + _text_of(body.get("instructions"))) + 4
    else:
        input_tokens = estimate_tokens(_text_of(body.get("input") or body.get("prompt")))

    if endpoint in ("/v1/embeddings", "/v1/moderations"):
        return Outcome(status_code=200, input_tokens=input_tokens)

    limit = body.get("max_tokens") or body.get("max_completion_tokens") or body.get("max_output_tokens")
    text = _reply(custom_id, limit)
    output_tokens = estimate_tokens(text)
    finish_reason = "stop"
    if isinstance(limit, int) and 0 < limit < output_tokens:
        text = text[: limit * 4]
        output_tokens = limit
        finish_reason = "length"
    reasoning = 0
    if model.startswith(REASONING_MODELS):
        reasoning = 64 + _number("reasoning", custom_id) % 448
        output_tokens += reasoning
    return Outcome(
        status_code=200,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        reasoning_tokens=reasoning,
        text=text,
        finish_reason=finish_reason,
    )


def _reply(custom_id: str, limit) -> str:
    first = _number("reply", custom_id) % len(REPLIES)
    if not isinstance(limit, int) or limit < LONG_ANSWER_TOKENS:
        return REPLIES[first]
    wanted = limit * 4 * (1 + _number("length", custom_id) % 1000 / 1000) / 3  # characters
    paragraphs, sentences, size, index = [], [], 0, first
    while size < wanted:
        sentence = REPLIES[index % len(REPLIES)]
        sentences.append(sentence)
        size += len(sentence) + 1
        index += 7
        if len(sentences) == 4:
            paragraphs.append(" ".join(sentences))
            sentences = []
    paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraph for paragraph in paragraphs if paragraph)


def _base62(seed: str, length: int) -> str:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    number = int(_digest("id", seed), 16)
    chars = []
    for _ in range(length):
        number, rest = divmod(number, 62)
        chars.append(alphabet[rest])
    return "".join(chars)


def _chat_body(outcome: Outcome, model: str, created: int, seed: str) -> dict:
    return {
        "id": "chatcmpl-" + _base62(seed, 29),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": outcome.text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": outcome.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": outcome.input_tokens,
            "completion_tokens": outcome.output_tokens,
            "total_tokens": outcome.input_tokens + outcome.output_tokens,
            "prompt_tokens_details": {"cached_tokens": outcome.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": outcome.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_" + _digest("fp", model)[:10],
    }


def _responses_body(outcome: Outcome, model: str, created: int, seed: str, body: dict) -> dict:
    response_id = "resp_" + _digest("resp", seed)[:48]
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": "completed" if outcome.finish_reason == "stop" else "incomplete",
        "background": False,
        "error": None,
        "incomplete_details": None if outcome.finish_reason == "stop" else {"reason": "max_output_tokens"},
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": [
            {
                "id": "msg_" + _digest("msg", seed)[:48],
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": outcome.text}],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": "medium" if outcome.reasoning_tokens else None, "summary": None},
        "service_tier": "default",
        "store": False,
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": outcome.input_tokens,
            "input_tokens_details": {"cached_tokens": outcome.cached_tokens},
            "output_tokens": outcome.output_tokens,
            "output_tokens_details": {"reasoning_tokens": outcome.reasoning_tokens},
            "total_tokens": outcome.input_tokens + outcome.output_tokens,
        },
        "user": None,
        "metadata": {},
    }


def _embeddings_body(outcome: Outcome, model: str, seed: str, body: dict) -> dict:
    inputs = body.get("input")
    inputs = inputs if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else [inputs]
    dimensions = body.get("dimensions")
    if not isinstance(dimensions, int) or not 1 <= dimensions <= MAX_EMBEDDING_DIMENSIONS:
        dimensions = DEFAULT_EMBEDDING_DIMENSIONS
    data = []
    for index, item in enumerate(inputs):
        rng = random.Random(_digest("embedding", seed, str(index), json.dumps(item, sort_keys=True)))
        raw = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
        norm = math.sqrt(sum(value * value for value in raw)) or 1.0
        data.append({"object": "embedding", "index": index, "embedding": [round(v / norm, 6) for v in raw]})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": outcome.input_tokens, "total_tokens": outcome.input_tokens},
    }


def _other_body(endpoint: str, outcome: Outcome, model: str, created: int, seed: str, body: dict) -> dict:
    if endpoint == "/v1/completions":
        return {
            "id": "cmpl-" + _base62(seed, 29),
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"text": outcome.text, "index": 0, "logprobs": None, "finish_reason": outcome.finish_reason}],
            "usage": {
                "prompt_tokens": outcome.input_tokens,
                "completion_tokens": outcome.output_tokens,
                "total_tokens": outcome.input_tokens + outcome.output_tokens,
            },
        }
    if endpoint == "/v1/moderations":
        inputs = body.get("input")
        count = len(inputs) if isinstance(inputs, list) and inputs else 1
        return {
            "id": "modr-" + _digest("modr", seed)[:32],
            "model": model,
            "results": [
                {
                    "flagged": False,
                    "categories": dict.fromkeys(MODERATION_CATEGORIES, False),
                    "category_scores": {
                        name: round(0.0001 + (_number(seed, name) % 100) / 1e5, 6) for name in MODERATION_CATEGORIES
                    },
                    "category_applied_input_types": {name: ["text"] for name in MODERATION_CATEGORIES},
                }
                for _ in range(count)
            ],
        }
    if endpoint == "/v1/videos":
        return {
            "id": "video_" + _digest("video", seed)[:32],
            "object": "video",
            "model": model,
            "status": "completed",
            "created_at": created,
            "progress": 100,
            "seconds": "4",
            "size": "720x1280",
        }
    # Images: a 1x1 transparent PNG keeps files small while keeping the shape.
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
    return {
        "created": created,
        "data": [{"b64_json": pixel, "revised_prompt": None}],
        "usage": {"input_tokens": outcome.input_tokens, "output_tokens": 0, "total_tokens": outcome.input_tokens},
    }


def result_line(
    batch_id: str, endpoint: str, line: dict, outcome: Outcome | None, created: int, unrun_code: str | None = None
) -> dict:
    """One line of an output or error file (REFERENCE §7).

    `outcome` None means the request never ran: a non-HTTP failure with `unrun_code` (batch_cancelled/expired).
    """
    custom_id = line["custom_id"]
    seed = f"{batch_id}/{custom_id}"
    line_id = f"batch_req_{created:08x}{_digest('line', seed)[:24]}"
    if outcome is None:
        message = {
            "batch_expired": "This request could not be executed before the completion window expired.",
            "batch_cancelled": "This request was not executed because the batch was cancelled.",
        }[unrun_code]
        return {
            "id": line_id,
            "custom_id": custom_id,
            "response": None,
            "error": {"code": unrun_code, "message": message},
        }
    body = line["body"]
    model = snapshot(request_model(endpoint, body) or "")
    if not outcome.succeeded:
        response_body = {"error": outcome.error}
    elif endpoint == "/v1/chat/completions":
        response_body = _chat_body(outcome, model, created, seed)
    elif endpoint == "/v1/responses":
        response_body = _responses_body(outcome, model, created, seed, body)
    elif endpoint == "/v1/embeddings":
        response_body = _embeddings_body(outcome, model, seed, body)
    else:
        response_body = _other_body(endpoint, outcome, model, created, seed, body)
    return {
        "id": line_id,
        "custom_id": custom_id,
        "response": {
            "status_code": outcome.status_code,
            "request_id": "req_" + _digest("req", seed)[:32],
            "body": response_body,
        },
        "error": None,
    }
