"""Post-processing of the generated OpenAPI schema, for what holds for every operation at once."""


def _error(description: str) -> dict:
    """A response in the one error shape (`detail`), described."""
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _operations(result):
    for operations in result.get("paths", {}).values():
        yield from operations.values()


UNAUTHORIZED = _error("Not logged in: send `Authorization: Token <key>` or a session cookie.")
THROTTLED = _error("Too many requests (MISTUDIO_THROTTLE_*): `detail` and the Retry-After header say when to try again.")


def declare_unauthorized(result, generator, request, public):
    """Every operation that needs a logged-in user can answer 401; say so, in the one error shape."""
    for operation in _operations(result):
        if any(requirement for requirement in operation.get("security") or []):
            operation.setdefault("responses", {}).setdefault("401", UNAUTHORIZED)
    return result


def declare_throttled(result, generator, request, public):
    """Every operation is rate-limited per user (mistudio.throttles); say so, in the one error shape."""
    for operation in _operations(result):
        operation.setdefault("responses", {}).setdefault("429", THROTTLED)
    return result
