"""Validation against the OpenAPI excerpt in "relaxed" mode (the approach of the reference's validate_examples.py)."""

import copy
import functools

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.reference import SPEC_PATH


def relax(node):
    """Non-required properties also accept null, and `nullable: true` means null is allowed (as the live API does)."""
    if isinstance(node, list):
        return [relax(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: relax(v) for k, v in node.items()}
    if node.pop("nullable", False):
        return {"anyOf": [node, {"type": "null"}]}
    props = node.get("properties")
    if isinstance(props, dict):
        required = set(node.get("required", []))
        for name, sub in list(props.items()):
            if name not in required:
                props[name] = {"anyOf": [sub, {"type": "null"}]}
    return node


@functools.cache
def validator_for(schema_name: str) -> Draft202012Validator:
    spec = yaml.safe_load(SPEC_PATH.read_text())
    components = copy.deepcopy(spec["components"])
    components["schemas"] = {name: relax(schema) for name, schema in components["schemas"].items()}
    registry = Registry().with_resource("urn:spec", Resource({"components": components}, specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"urn:spec#/components/schemas/{schema_name}"}, registry=registry)


def spec_errors(schema_name: str, document) -> list[str]:
    """Human-readable validation errors of `document` against the named schema; empty when it conforms."""
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator_for(schema_name).iter_errors(document)
    ]
