"""How hub failures become messages, with the hub calls replaced (no network here)."""

from types import SimpleNamespace

import httpx2 as httpx
import huggingface_hub
from huggingface_hub import constants as hub_constants
import pytest
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

from engine.errors import ModelResolutionError
from engine.models.resolve import resolve_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub(monkeypatch):
    """The hub's two calls (the metadata HEAD, then the download), recorded in `hub.calls`; set
    `hub.error` to an exception the HEAD raises."""

    class Hub:
        def __init__(self):
            self.calls, self.error, self.size = [], None, 700

        def metadata(self, *args, **kwargs):
            self.calls.append("metadata")
            if self.error is not None:
                raise self.error
            return SimpleNamespace(commit_hash=COMMIT, size=self.size)

        def download(self, *args, **kwargs):
            self.calls.append("download")
            self.downloaded_revision = kwargs.get("revision")
            return "/cache/config.json"

    fake = Hub()
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", fake.metadata)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.download)
    return fake


def _response(status: int):
    return httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/x"))


def test_a_gated_model_asks_for_a_token(hub, tmp_path):
    hub.error = GatedRepoError("gated", response=_response(403))
    with pytest.raises(ModelResolutionError, match="pass a huggingface_token") as caught:
        resolve_model("meta-llama/Llama-3.2-1B", models_dir=tmp_path)
    assert caught.value.requires_token is True


def test_a_missing_model_names_every_place_looked(hub, tmp_path):
    hub.error = RepositoryNotFoundError("nope", response=_response(404))
    with pytest.raises(ModelResolutionError, match=f"Model 'org/x' was not found locally, in {tmp_path}, or on the Hugging Face hub"):
        resolve_model("org/x", models_dir=tmp_path)


def test_a_connection_error_suggests_the_models_dir(hub, tmp_path):
    hub.error = OSError("Name or service not known")
    with pytest.raises(ModelResolutionError, match=rf"Put the model in {tmp_path}/org/x or pass a local path"):
        resolve_model("org/x", models_dir=tmp_path)


@pytest.mark.parametrize("error", [httpx.ConnectError("[Errno -2] Name or service not known"),
                                   httpx.ConnectError("[Errno 111] Connection refused")])
def test_a_hub_that_cannot_be_reached_is_asked_once(hub, tmp_path, error):
    hub.error = error
    with pytest.raises(ModelResolutionError, match="Could not reach the Hugging Face hub") as caught:
        resolve_model("org/x", models_dir=tmp_path, hub_timeout_s=30)
    assert str(error) in str(caught.value)
    # Not the download, which would retry the dead host with back-off until the timeout.
    assert hub.calls == ["metadata"]


def test_with_hf_hub_offline_the_hub_is_not_contacted(hub, tmp_path, monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE once, at import, into this constant.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelResolutionError, match="HF_HUB_OFFLINE is set"):
        resolve_model("org/x", models_dir=tmp_path, hub_timeout_s=30)
    assert hub.calls == []


def test_a_reachable_hub_resolves_to_the_id(hub, tmp_path):
    resolved = resolve_model("org/x", models_dir=tmp_path)
    assert (resolved.source, resolved.location, resolved.revision) == ("hub", "org/x", COMMIT)
    assert hub.calls == ["metadata", "download"]
    assert hub.downloaded_revision == COMMIT  # the file of the commit the HEAD named, not "main" again


def test_a_config_json_of_many_megabytes_is_not_downloaded(hub, tmp_path):
    hub.size = 2 * 1024**3
    with pytest.raises(ModelResolutionError, match="config.json of 'org/x' on the hub is 2,147,483,648 bytes"):
        resolve_model("org/x", models_dir=tmp_path)
    assert hub.calls == ["metadata"]
