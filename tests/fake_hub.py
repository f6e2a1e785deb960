"""A Hugging Face hub on 127.0.0.1 for tests, and this server logged in to the real one.

The hub serves folders or dicts of files as repositories, each push a new commit whose files stay
readable at their commit hash, the way huggingface_hub and transformers ask for them (HEAD and GET on
`/{repo}/resolve/{revision}/{file}` with X-Repo-Commit and ETag, the model-info and tree routes of
`/api/models/`). It records every request's method, path and Authorization header, so a test can
say what was asked for, at which commit, and with whose token.

Use the `fake_hub` fixture (import it into the test module): huggingface_hub reads HF_ENDPOINT and
its token and cache paths at import, so the fixture sets the environment for processes a test
starts and patches huggingface_hub's constants for this one.
"""
import hashlib
import http.server
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

# The server's own login: in its environment, and saved in its HF_HOME as `hf auth login` does.
SERVER_TOKEN = "hf_SERVER_LOGIN_from_the_environment"
SERVER_SAVED_TOKEN = "hf_SERVER_LOGIN_saved_in_hf_home"


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None
    range: str | None = None  # a ranged GET (a safetensors header read) asks for part of a file


@dataclass
class FakeHub:
    commits: dict = field(default_factory=dict)  # repo id -> {commit hash: {file name: bytes}}
    heads: dict = field(default_factory=dict)  # repo id -> the commit "main" is at
    requests: list = field(default_factory=list)
    url: str = ""
    # commit -> {file name: the size model-info reports}, where it is not the bytes served: a 16 GB
    # shard's size with a few bytes to serve.
    reported_sizes: dict = field(default_factory=dict)

    def push_folder(self, repo_id: str, folder: Path) -> str:
        """Serve every file of `folder` as `repo_id`'s next commit; its hash is returned."""
        return self.push(repo_id, {p.relative_to(folder).as_posix(): p.read_bytes()
                                   for p in sorted(folder.rglob("*")) if p.is_file()})

    def push(self, repo_id: str, files: dict, *, reported_sizes: dict | None = None) -> str:
        """Serve `files` (name -> bytes or text) as `repo_id`'s next commit; `reported_sizes`: the
        size model-info gives for some of them instead of their length."""
        files = {name: content if isinstance(content, bytes) else content.encode() for name, content in files.items()}
        digest = hashlib.sha1(repo_id.encode() + self.heads.get(repo_id, "").encode())
        for name, content in sorted(files.items()):
            digest.update(name.encode() + hashlib.sha1(content).digest())
        commit = digest.hexdigest()
        self.commits.setdefault(repo_id, {})[commit] = files
        self.heads[repo_id] = commit
        self.reported_sizes[commit] = dict(reported_sizes or {})
        return commit

    def authorizations(self) -> set:
        return {r.authorization for r in self.requests}

    def file_paths(self) -> list:
        """The paths of every file request (`/{repo}/resolve/{revision}/{file}`)."""
        return [r.path for r in self.requests if "/resolve/" in r.path]

    def _answer(self, handler, method: str):
        path = unquote(urlsplit(handler.path).path)
        self.requests.append(Request(method, path, handler.headers.get("Authorization"), handler.headers.get("Range")))
        if path.startswith("/api/models/"):
            return self._api(handler, method, path.removeprefix("/api/models/"))
        repo_id, _, rest = path.lstrip("/").partition("/resolve/")
        revision, _, name = rest.partition("/")
        if repo_id not in self.commits or not rest:
            return _send(handler, method, 404, b"Repository not found", {"X-Error-Code": "RepoNotFound"})
        commit = self.heads[repo_id] if revision == "main" else revision
        if commit not in self.commits[repo_id]:
            return _send(handler, method, 404, b"Revision not found", {"X-Error-Code": "RevisionNotFound"})
        files = self.commits[repo_id][commit]
        if name not in files:
            return _send(handler, method, 404, b"Entry not found", {"X-Error-Code": "EntryNotFound",
                                                                     "X-Repo-Commit": commit})
        content = files[name]
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha1(content).hexdigest()}"'}
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", handler.headers.get("Range") or "")
        if method == "GET" and ranged:
            first = int(ranged[1])
            last = min(int(ranged[2]) if ranged[2] else len(content) - 1, len(content) - 1)
            headers["Content-Range"] = f"bytes {first}-{last}/{len(content)}"
            return _send(handler, method, 206, content[first:last + 1], headers)
        return _send(handler, method, 200, content, headers)

    def _api(self, handler, method, rest):
        """A model's info at a revision (its commit and files), and a folder's listing (none here:
        transformers looks for additional_chat_templates/)."""
        for route in ("/revision/", "/tree/"):
            repo_id, found, after = rest.partition(route)
            if found and repo_id in self.commits:
                if route == "/tree/":
                    return _send(handler, method, 404, b"Entry not found", {"X-Error-Code": "EntryNotFound"})
                revision = after.partition("/")[0]
                commit = self.heads[repo_id] if revision == "main" else revision
                files = self.commits[repo_id].get(commit, {})
                body = json.dumps({"id": repo_id, "sha": commit,
                                   "siblings": [{"rfilename": n, "size": self.reported_sizes.get(commit, {}).get(n, len(c))}
                                                for n, c in files.items()]})
                return _send(handler, method, 200, body.encode(), {"Content-Type": "application/json"})
        return _send(handler, method, 404, b"Repository not found", {"X-Error-Code": "RepoNotFound"})


def _send(handler, method, status, body, headers):
    handler.send_response(status)
    for key, value in {**headers, "Content-Length": str(len(body))}.items():
        handler.send_header(key, value)
    handler.end_headers()
    if method == "GET":
        handler.wfile.write(body)


def start(hub: FakeHub):
    """Serve `hub` from a daemon thread; returns the server (shutdown() stops it)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_HEAD(self):
            hub._answer(self, "HEAD")

        def do_GET(self):
            hub._answer(self, "GET")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, name="fake-hub", daemon=True).start()
    return server


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A FakeHub at HF_ENDPOINT, an empty hub cache, and this server logged in to the hub: HF_TOKEN
    in its environment and another token saved in its HF_HOME."""
    from huggingface_hub import constants
    import transformers.utils.hub as transformers_hub

    hub = FakeHub()
    server = start(hub)
    home = tmp_path / "hf-home"
    home.mkdir()
    (home / "token").write_text(SERVER_SAVED_TOKEN)
    where = {"HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
             "HF_TOKEN_PATH": str(home / "token"), "HF_TOKEN": SERVER_TOKEN}
    for name, value in where.items():
        monkeypatch.setenv(name, value)  # processes the test starts read them at import
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(transformers_hub, "_hf_api", None)  # made again, at this endpoint
    yield hub
    server.shutdown()
    server.server_close()
