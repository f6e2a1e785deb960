"""How hub failures become messages, with the hub call replaced (no network here)."""

import httpx2 as httpx
import huggingface_hub
import pytest
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

from engine.errors import ModelResolutionError
from engine.resolve import resolve_model


def _raising(exc):
    def fake_download(*args, **kwargs):
        raise exc

    return fake_download


def _response(status: int):
    return httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/x"))


def test_a_gated_model_asks_for_a_token(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _raising(GatedRepoError("gated", response=_response(403))))
    with pytest.raises(ModelResolutionError, match="pass a huggingface_token") as caught:
        resolve_model("meta-llama/Llama-3.2-1B", models_dir=tmp_path)
    assert caught.value.requires_token is True


def test_a_missing_model_names_every_place_looked(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _raising(RepositoryNotFoundError("nope", response=_response(404))))
    with pytest.raises(ModelResolutionError, match=f"Model 'org/x' was not found locally, in {tmp_path}, or on the Hugging Face hub"):
        resolve_model("org/x", models_dir=tmp_path)


def test_a_connection_error_suggests_the_models_dir(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _raising(OSError("Name or service not known")))
    with pytest.raises(ModelResolutionError, match=rf"Put the model in {tmp_path}/org/x or pass a local path"):
        resolve_model("org/x", models_dir=tmp_path)


def test_a_reachable_hub_resolves_to_the_id(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: "/cache/config.json")
    resolved = resolve_model("org/x", models_dir=tmp_path)
    assert (resolved.source, resolved.location) == ("hub", "org/x")
