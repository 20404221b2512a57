"""Where the tests find the API reference material (a copy of shared/openai-batch-api kept in the repository)."""

from pathlib import Path

REFERENCE_DIR = Path(__file__).resolve().parent / "fixtures" / "openai-batch-api"
EXAMPLES = REFERENCE_DIR / "examples"
SPEC_PATH = REFERENCE_DIR / "openapi-batches-files.yaml"
