"""OpenAPI: the schema states every rule of the input it can express, and every operation
documents the one error shape for the errors it can answer with.

Rules OpenAPI 3.0 cannot state (a range relative to now, one field against another, a name
pattern for an object's keys, a reference that must exist) are said in descriptions; the API
refuses them with a 400 that names the field.
"""

import copy

from django.core.validators import ProhibitNullCharactersValidator, RegexValidator
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from rest_framework import serializers

# JSON Schema patterns (the ECMA dialect, read the same by Python's re).
NO_NUL_PATTERN = r"^[^\x00]*$"
NOT_BLANK_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"  # DRF trims, then refuses "" as blank
MAX_ID = 2**63 - 1
PATH_IDS = {"id", "simulation_id"}


class AutoSchema(SpectacularAutoSchema):
    """drf-spectacular's schema, with the rules our fields enforce and it leaves out."""

    def _get_request_for_media_type(self, serializer, direction="request"):
        if self.method != "PATCH" or getattr(self.view, "action", None) == "partial_update":
            return super()._get_request_for_media_type(serializer, direction)
        # DRF makes only partial_update's serializer partial; a PATCH @action (such as
        # /machines/{id}/status) validates its body whole, required fields and all.
        self.method = "POST"
        try:
            return super()._get_request_for_media_type(serializer, direction)
        finally:
            self.method = "PATCH"

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        own = getattr(field, "openapi_schema", None)  # a field that knows its schema better
        if own is not None:
            schema = own(lambda child: self._map_child(child, direction), direction)
            if schema is not None:
                return schema
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if direction == "request" and isinstance(field, serializers.CharField):
            _state_text_rules(field, schema)
        return schema

    def _map_child(self, child, direction) -> dict:
        schema = self._map_serializer_field(child, direction)
        self._insert_field_validators(child, schema)
        return schema

    def _map_basic_serializer(self, serializer, direction):
        schema = super()._map_basic_serializer(serializer, direction)
        rules = copy.deepcopy(getattr(serializer, "openapi_rules", None) or {})
        if direction == "request" and rules:
            schema.setdefault("properties", {}).update(rules.pop("properties", {}))
            schema.update(rules)
        return schema


def _state_text_rules(field: serializers.CharField, schema: dict) -> None:
    """DRF refuses NUL characters in every CharField and, when it trims, a blank after
    trimming: say so with a pattern where the field has none of its own."""
    if any(key in schema for key in ("pattern", "enum", "format")):
        return
    if any(isinstance(v, RegexValidator) for v in field.validators):
        return  # its own pattern (inserted later) says more
    if not any(isinstance(v, ProhibitNullCharactersValidator) for v in field.validators):
        return
    blank_refused = field.trim_whitespace and not field.allow_blank
    schema["pattern"] = NOT_BLANK_PATTERN if blank_refused else NO_NUL_PATTERN


def state_parameter_rules(result, generator, request, public):
    """drf-spectacular postprocessing hook: path ids are positive 64-bit integers (the router's
    regex is digits), pages start at 1, a list in a query string is comma-separated
    (`?simulations=1,2`, as our query serializers read it; repeated names are explicit), and an
    optional query parameter sent empty (`?min_gpus=`, as an HTML form sends it) is ignored, as
    django-filter and DRF's query serializers ignore it (but for repeated ones, below)."""
    for item in result.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            for parameter in operation.get("parameters", []):
                schema = parameter.get("schema", {})
                if parameter["in"] == "path" and parameter["name"] in PATH_IDS:
                    parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
                if parameter["in"] != "query":
                    continue
                if parameter["name"] == "page":
                    schema["minimum"] = 1
                if schema.get("type") == "array":
                    parameter.setdefault("style", "form")
                    parameter.setdefault("explode", False)
                # `?status=` names an empty choice, which the choice filter refuses.
                if not parameter.get("required") and not parameter.get("explode"):
                    parameter["allowEmptyValue"] = True
    return result


ERROR_COMPONENT = "Error"
ERROR_SCHEMA = {
    "type": "object",
    "description": "The one error shape of every 4xx/5xx (simsched.exceptions).",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {"type": "object", "additionalProperties": True},
                "details": {"type": "object", "additionalProperties": True},
            },
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}
SIGNED_IN_ERRORS = {
    "401": "Not signed in.",
    "403": "Signed in, but not allowed to do this.",
    "404": "Not found.",
    "503": "The database is unavailable; retry shortly.",
}
INPUT_ERRORS = {"400": "Invalid input."}
WRITE_ERRORS = {"409": "Conflicts with the current state."}
BODY_ERRORS = {
    "413": "Body larger than MAX_REQUEST_BYTES.",
    "415": "Body is not application/json.",
}
WRITE_METHODS = {"post", "put", "patch", "delete"}


def _errors_for(method: str, operation: dict) -> dict[str, str]:
    if not any(requirement for requirement in operation.get("security", [])):
        return {}  # public (health): documents its own answers
    errors = dict(SIGNED_IN_ERRORS)
    has_query = any(p.get("in") == "query" for p in operation.get("parameters", []))
    if has_query or "requestBody" in operation:
        errors.update(INPUT_ERRORS)
    if method in WRITE_METHODS:
        errors.update(WRITE_ERRORS)
    if "requestBody" in operation:
        errors.update(BODY_ERRORS)
    return errors


def document_errors(result, generator, request, public):
    """drf-spectacular postprocessing hook: add the error responses to every operation."""
    result.setdefault("components", {}).setdefault("schemas", {})[ERROR_COMPONENT] = ERROR_SCHEMA
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}}}
    for item in result.get("paths", {}).values():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for code, description in _errors_for(method, operation).items():
                documented = operation["responses"].get(code, {})
                operation["responses"][code] = {
                    "description": documented.get("description") or description,
                    "content": content,
                }
    return result
