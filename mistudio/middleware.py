"""Cache-Control on what is a user's own: every API answer (downloads included) and any file sent."""
from django.http import FileResponse, StreamingHttpResponse

PRIVATE = "private, no-store"
_PRIVATE_PREFIXES = ("/api/", "/gpu/")


class PrivateCacheMiddleware:
    """API answers and downloads carry `Cache-Control: private, no-store`: no shared cache keeps
    them and no browser stores them, unless a view set its own Cache-Control."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        private = request.path.startswith(_PRIVATE_PREFIXES) or isinstance(response, (FileResponse, StreamingHttpResponse))
        if private and not response.has_header("Cache-Control"):
            response["Cache-Control"] = PRIVATE
        return response
