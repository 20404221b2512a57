"""The API's rules as the sandbox enforces them, stated here from the reference and not taken from the client.

The dashboard's client (batches/services.py) keeps its own copy of these facts. The two are written apart on
purpose: the sandbox checks the client, so a client that drifts from the API fails against the sandbox instead of
sharing the mistake. Section numbers are those of docs/openai-batch-api/REFERENCE.md; "sandbox choice" marks a rule
the reference does not give.
"""

# §4.1: the status enum, and the four statuses a batch never leaves.
STATUSES = ("validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled")
TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})

# §2.6: the endpoints a batch may run, and the only completion window.
ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
COMPLETION_WINDOW = "24h"
# Endpoints whose request bodies may leave out `model` (the endpoint then picks its default model).
ENDPOINTS_WITHOUT_MODEL = ("/v1/moderations", "/v1/images/generations", "/v1/images/edits", "/v1/videos")

# §2.6, §5: metadata and expiry policies.
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY_LENGTH = 64
METADATA_MAX_VALUE_LENGTH = 512
EXPIRY_MIN_SECONDS = 3600
EXPIRY_MAX_SECONDS = 2_592_000

# §2.1: upload limits, and the default retention of files with purpose `batch`.
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_INPUT_FILE_BYTES = 200 * 1024 * 1024
FILE_RETENTION_S = 30 * 86_400

# §6: the input file.
MAX_REQUESTS_PER_BATCH = 50_000
UTF8_BOM = b"\xef\xbb\xbf"
# Sandbox choice: the reference gives no limit on one line, but no single request the endpoints accept comes near
# it; a longer line is refused before it is read whole, so validating any file needs at most this much memory.
MAX_LINE_BYTES = 10 * 1024 * 1024

# §2.2, §2.8: page sizes.
BATCHES_LIST_LIMIT_DEFAULT = 20
BATCHES_LIST_LIMIT_MAX = 100
FILES_LIST_LIMIT_MAX = 10_000
