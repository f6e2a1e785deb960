"""A page's corpus upload (the New job form has one): a multipart form for logged-in users that stores
the file through corpus_add, as POST /api/v1/upload does, and goes back to the page it came from,
saying what was stored or why not (Django's messages); the stored corpus's name rides along as
`corpus_file`, so the form it came from has it chosen."""
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponseNotAllowed
from django.shortcuts import redirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import csrf_exempt, csrf_protect

from corpora.parsers import StrictFileNameUploadHandler
from corpora.services import corpus_add
from mistudio.errors import ServiceError
from mistudio.throttles import throttled_page


# As in the admin's upload: the file's name is checked with the API's strict rules while the body is
# parsed, so the strict handler must be in place before the CSRF check reads the body; the token is
# checked right after, by csrf_protect.
@csrf_exempt
@login_required
@throttled_page
def corpus_upload_page(request):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    back = request.GET.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        back = "/"
    request.upload_handlers.insert(0, StrictFileNameUploadHandler(request))
    try:
        return _upload(request, back)
    except ServiceError as err:  # refused while the body streamed in: too large, or a name with folders
        messages.error(request, err.message)
        return redirect(back)


@csrf_protect
def _upload(request, back):
    upload = request.FILES.get("file")
    if upload is None:
        messages.error(request, "Choose a corpus file to upload.")
        return redirect(back)
    try:
        corpus = corpus_add(owner=request.user, name=upload.name, chunks=upload.chunks(),
                            text_field=request.POST.get("text_field") or "text")
    except ServiceError as err:
        messages.error(request, err.message)
        return redirect(back)
    messages.success(request, f"Uploaded {corpus.name}: {corpus.documents_count:,} documents ({corpus.format}).")
    return redirect(f"{back}{'&' if '?' in back else '?'}{urlencode({'corpus_file': corpus.name})}")
