"""OpenAPI: every operation documents the one error shape for the errors it can answer with."""

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
