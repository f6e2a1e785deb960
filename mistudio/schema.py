"""Post-processing of the generated OpenAPI schema, for what holds for every operation at once."""

UNAUTHORIZED = {
    "description": "Not logged in: send `Authorization: Token <key>` or a session cookie.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def declare_unauthorized(result, generator, request, public):
    """Every operation that needs a logged-in user can answer 401; say so, in the one error shape."""
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            security = operation.get("security") or []
            if any(requirement for requirement in security):
                operation.setdefault("responses", {}).setdefault("401", UNAUTHORIZED)
    return result


THROTTLED = {
    "description": "Too many requests (MISTUDIO_THROTTLE_*): `detail` and the Retry-After header say when to try again.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def declare_throttled(result, generator, request, public):
    """Every operation is rate-limited per user (mistudio.throttles); say so, in the one error shape."""
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            operation.setdefault("responses", {}).setdefault("429", THROTTLED)
    return result
