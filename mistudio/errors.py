"""One error shape for the whole API: {"detail": "..."} (plus per-field `errors` on validation)."""
import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent

from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger("mistudio")


class ErrorSerializer(serializers.Serializer):
    """The error shape, for the schema of every app's views."""

    detail = serializers.CharField()


class ServiceError(Exception):
    """A request a service refuses, with a message that says what to fix. Interfaces show it as is:
    the API as {"detail": message} with `status_code`, the admin as a message, the CLI as an error.
    `field`: the request field the message is about, where there is one, so that a form can show it
    next to that field (and the API adds it to `errors`, as a serializer's validation does)."""

    status_code = 400

    def __init__(self, message, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class Forbidden(ServiceError):
    """Something only staff may ask for (a job's `force`)."""

    status_code = 403


class TooManyRequests(ServiceError):
    """Over a per-user quota that frees itself (active jobs): try again once some have ended."""

    status_code = 429


def flatten_errors(errors, prefix=""):
    if isinstance(errors, dict):
        for key, value in errors.items():
            name = "" if key == "non_field_errors" else f"{prefix}{key}"
            yield from flatten_errors(value, f"{name}." if name else "")
    elif isinstance(errors, list):
        for item in errors:
            yield from flatten_errors(item, prefix)
    else:
        field = prefix.rstrip(".")
        yield f"{field}: {errors}" if field else str(errors)


def exception_handler(exc, context):
    if isinstance(exc, ServiceError):
        body = {"detail": exc.message}
        if exc.field:
            body["errors"] = {exc.field: [exc.message]}
        return Response(body, status=exc.status_code)
    if isinstance(exc, RequestDataTooBig):
        return Response(
            {"detail": f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes "
                       "(MISTUDIO_REQUEST_MAX_BYTES); corpora go through POST /api/v1/upload."},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, TooManyFieldsSent):
        return Response({"detail": "The request has too many form fields."}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, exceptions.ValidationError) and not (
        isinstance(exc.detail, dict) and set(exc.detail) == {"detail"}
    ):
        messages = list(flatten_errors(exc.detail))
        return Response(
            {"detail": " ".join(messages) or "Invalid input.", "errors": exc.detail},
            status=status.HTTP_400_BAD_REQUEST,
        )
    response = drf_exception_handler(exc, context)
    if response is not None:
        if isinstance(response.data, dict) and "detail" in response.data:
            response.data = {"detail": str(response.data["detail"])}
        return response
    request, view = context.get("request"), context.get("view")
    logger.exception("Unhandled error in %s %s (%s)", getattr(request, "method", "?"), getattr(request, "path", "?"),
                     type(view).__name__)
    return Response(
        {"detail": f"Internal error ({type(exc).__name__}); the server log has the details."},
        status=status.HTTP_500_INTERNAL_SERVER_ERROR,
    )
