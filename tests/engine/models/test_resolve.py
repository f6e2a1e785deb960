"""Where a model name leads: a local folder, the models folder, a bundled copy or the hub. No test
here may reach beyond this machine (tests/network.py fails it if it tries): the hub these tests
meet is a closed local port."""
import shutil
import time

import pytest

from engine.errors import ModelResolutionError
from engine.models.resolve import BUNDLED_MODEL_NAME, ResolvedModel, load_config, resolve_model
from tests.network import outside_network_blocked, unreachable_hub  # noqa: F401 (fixtures)


@pytest.fixture(autouse=True)
def hub(unreachable_hub):
    return unreachable_hub


def test_it_loads_a_local_directory_with_a_config(tiny_gpt2_dir, tmp_path):
    resolved = resolve_model(str(tiny_gpt2_dir), models_dir=tmp_path)
    assert resolved.source == "local"
    assert resolved.location == str(tiny_gpt2_dir.resolve())


def test_it_finds_a_hub_like_name_in_the_models_dir(tiny_gpt2_dir, tmp_path):
    shutil.copytree(tiny_gpt2_dir, tmp_path / "models" / "tiny" / "gpt2")
    resolved = resolve_model("tiny/gpt2", models_dir=tmp_path / "models")
    assert resolved == ResolvedModel("tiny/gpt2", str(tmp_path / "models" / "tiny" / "gpt2"), "models_dir")


def test_the_models_dir_wins_over_the_bundled_copy(minilm_dir, tmp_path):
    shutil.copytree(minilm_dir, tmp_path / BUNDLED_MODEL_NAME)
    assert resolve_model(BUNDLED_MODEL_NAME, models_dir=tmp_path).source == "models_dir"


def test_the_bundled_name_resolves_without_network(tmp_path, minilm_dir):
    resolved = resolve_model(BUNDLED_MODEL_NAME, models_dir=tmp_path)
    assert resolved.source == "bundled"
    assert resolved.location == str(minilm_dir)


@pytest.mark.parametrize("name", ["../secret", "tiny/../../etc", "tiny/..\\x"])
def test_it_rejects_names_that_climb_out_of_the_models_dir(tmp_path, name):
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "config.json").write_text("{}")
    with pytest.raises(ModelResolutionError, match=r"'\.\.'"):
        resolve_model(name, models_dir=tmp_path / "models")


def test_a_missing_absolute_path_is_reported_as_a_path(tmp_path):
    with pytest.raises(ModelResolutionError, match="does not exist on this worker"):
        resolve_model(str(tmp_path / "nope"), models_dir=tmp_path)


def test_an_empty_name_is_rejected(tmp_path):
    with pytest.raises(ModelResolutionError, match="empty"):
        resolve_model("  ", models_dir=tmp_path)


def test_a_malformed_id_is_rejected_before_any_network_call(tmp_path):
    with pytest.raises(ModelResolutionError, match="not a valid model id"):
        resolve_model("org/name/extra", models_dir=tmp_path)


def test_an_unreachable_hub_fails_quickly_with_what_to_do(tmp_path, hub):
    started = time.monotonic()
    with pytest.raises(ModelResolutionError) as caught:
        resolve_model("nobody-here/no-such-model-xyz", models_dir=tmp_path, hub_timeout_s=2.0)
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert "Could not reach the Hugging Face hub to fetch 'nobody-here/no-such-model-xyz'" in message
    assert f"Put the model in {tmp_path}/nobody-here/no-such-model-xyz or pass a local path" in message
    assert caught.value.requires_token is False


def test_an_unreadable_config_is_reported_clearly(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    resolved = resolve_model(str(tmp_path / "broken"), models_dir=None)
    with pytest.raises(ModelResolutionError, match="Could not read the config"):
        load_config(resolved)


def test_with_local_roots_a_path_outside_them_is_refused_before_anything_is_looked_at(tmp_path, tiny_gpt2_dir):
    roots = [tmp_path / "models"]
    (tmp_path / "no-config").mkdir()
    messages = []
    for path in (tiny_gpt2_dir, tmp_path / "no-config", tmp_path / "missing"):
        with pytest.raises(ModelResolutionError) as caught:
            resolve_model(str(path), models_dir=tmp_path / "models", local_roots=roots)
        messages.append(str(caught.value).replace(str(path), "PATH"))
    assert len(set(messages)) == 1 and "outside the folders this server loads models from" in messages[0]


def test_with_local_roots_a_folder_inside_them_still_resolves(tmp_path, tiny_gpt2_dir):
    shutil.copytree(tiny_gpt2_dir, tmp_path / "models" / "mine")
    resolved = resolve_model(str(tmp_path / "models" / "mine"), models_dir=None, local_roots=[tmp_path / "models"])
    assert resolved.source == "local"
