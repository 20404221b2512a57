"""Validation against the OpenAPI excerpt in "relaxed" mode, by the reference's own validate_examples.py."""

import functools
import importlib.util

from tests.reference import REFERENCE_DIR


@functools.cache
def _reference_validator():
    """The vendored validate_examples.py, loaded from its file (its folder is not a package)."""
    spec = importlib.util.spec_from_file_location("validate_examples", REFERENCE_DIR / "validate_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def validator_for(schema_name: str):
    """Non-required properties also accept null and `nullable: true` means null is allowed, as the live API does."""
    return _reference_validator().validator_for(schema_name, strict=False)


def spec_errors(schema_name: str, document) -> list[str]:
    """Human-readable validation errors of `document` against the named schema; empty when it conforms."""
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator_for(schema_name).iter_errors(document)
    ]
