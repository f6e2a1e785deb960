"""A server error is logged to stderr with the request's path and traceback even with DEBUG off
(Django alone would only mail it to ADMINS, and none are set), and never with a token in it: a real
server process whose views raise with the caller's tokens in the exception's message."""
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
HF_TOKEN = "hf_" + "Zq7xK2mP9vR4tY8wB3nL6cF1hJ5dS0gA"

# The server: migrated, a user with an API token (printed), two views replaced by ones that raise with
# every secret of the request in their message, then Django's WSGI application on a free port (printed).
SERVER = """
import os, sys
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from mistudio.accounts import user_issue_token
from training.pages import jobs as pages
from training.api import jobs as views

def validate_raises(self, request, *args, **kwargs):
    raise RuntimeError(f"the hub refused {request.data} sent with {request.META['HTTP_AUTHORIZATION']}")

def page_raises(request, *args, **kwargs):
    raise RuntimeError(f"the page saw huggingface_token={request.GET['huggingface_token']} "
                       f"and {request.headers['Authorization']}")

views.ValidateModelView.post = validate_raises
pages.gpu_page = page_raises  # before the URLs are imported, at the first request
from wsgiref.simple_server import WSGIRequestHandler, make_server
from django.core.wsgi import get_wsgi_application

class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

server = make_server("127.0.0.1", 0, get_wsgi_application(), handler_class=Quiet)
print(user_issue_token(username="alice")[1], server.server_port, flush=True)
server.serve_forever()
"""


def call(url, token, body=None):
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Token {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.slow
def test_a_server_error_is_logged_with_its_path_and_no_token(tmp_path):
    env = {name: value for name, value in os.environ.items()
           if name not in ("MISTUDIO_DEBUG", "DATABASE_URL", "REDIS_URL")}
    env.update(MISTUDIO_DATA_DIR=str(tmp_path / "server-data"), DJANGO_SETTINGS_MODULE="mistudio.settings",
               MISTUDIO_HTTPS="0")
    server = subprocess.Popen([sys.executable, "-c", SERVER], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        api_token, port = server.stdout.readline().split()
        base = f"http://127.0.0.1:{port}"
        status, body = call(f"{base}/api/v1/validate-model", api_token,
                            {"model_name": "org/private", "huggingface_token": HF_TOKEN})
        assert status == 500 and json.loads(body)["detail"].startswith("Internal error (RuntimeError)")
        status, _ = call(f"{base}/gpus/?huggingface_token={HF_TOKEN}", api_token)
        assert status == 500
    finally:
        server.terminate()
        _, log = server.communicate(timeout=30)

    assert "ERROR mistudio: Unhandled error in POST /api/v1/validate-model (ValidateModelView)" in log
    assert "ERROR django.request: Internal Server Error: /gpus/" in log
    assert log.count("Traceback (most recent call last)") == 2
    assert "RuntimeError: the hub refused" in log and "RuntimeError: the page saw huggingface_token=[scrubbed]" in log
    assert HF_TOKEN not in log and api_token not in log and api_token[:12] not in log
    assert "Token [scrubbed]" in log
