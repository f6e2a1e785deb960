"""engine.models.hub_files: the weight files from_pretrained downloads for a hub model, the way
transformers 5 chooses them, with the sizes the hub reports, asked before any is downloaded."""
import json

from huggingface_hub import hf_hub_download
import pytest

from engine.errors import EngineError
from engine.models.hub_files import MAX_INDEX_BYTES, WeightsTooLarge, check_download, shard_names, weight_files
from engine.models.resolve import ResolvedModel
from tests.fake_hub import fake_hub  # noqa: F401 - the fixture

CONFIG = json.dumps({"model_type": "gpt2"})


def model(hub, files, **reported):
    commit = hub.push("org/m", {"config.json": CONFIG, **files}, reported_sizes=reported.get("sizes"))
    hf_hub_download("org/m", "config.json", revision=commit)  # as resolve_model leaves it
    return ResolvedModel(name="org/m", location="org/m", source="hub", revision=commit)


def index(*shards):
    return json.dumps({"weight_map": {f"t{i}": shard for i, shard in enumerate(shards)}})


def listed(resolved):
    return weight_files(resolved, token=False, timeout_s=10).sizes


def test_safetensors_are_chosen_over_pytorch_files(fake_hub):
    resolved = model(fake_hub, {"model.safetensors": b"s" * 10, "pytorch_model.bin": b"b" * 20})
    assert listed(resolved) == {"model.safetensors": 10}


def test_without_safetensors_the_pytorch_shards_of_its_index_are_chosen(fake_hub):
    resolved = model(fake_hub, {"pytorch_model.bin.index.json": index("a.bin", "b.bin", "a.bin"),
                                "a.bin": b"a" * 3, "b.bin": b"b" * 4, "unrelated.bin": b"u" * 50})
    assert set(listed(resolved)) == {"pytorch_model.bin.index.json", "a.bin", "b.bin"}


def test_the_file_config_names_in_transformers_weights_is_chosen(fake_hub):
    config = json.dumps({"model_type": "gpt2", "transformers_weights": "other.safetensors"})
    resolved = model(fake_hub, {"config.json": config, "model.safetensors": b"s", "other.safetensors": b"o" * 7})
    assert listed(resolved) == {"other.safetensors": 7}


def test_an_index_naming_a_file_the_repository_lacks_is_refused(fake_hub):
    resolved = model(fake_hub, {"model.safetensors.index.json": index("a.safetensors", "../../etc/passwd")})
    with pytest.raises(EngineError, match="names files the repository does not have: ../../etc/passwd"):
        listed(resolved)


def test_an_oversized_index_is_refused_before_it_is_downloaded(fake_hub):
    resolved = model(fake_hub, {"model.safetensors.index.json": index("a.safetensors"), "a.safetensors": b"a"},
                     sizes={"model.safetensors.index.json": MAX_INDEX_BYTES + 1})
    with pytest.raises(EngineError, match="this server reads none over"):
        listed(resolved)
    assert not [path for path in fake_hub.file_paths() if path.endswith(".index.json")]


@pytest.mark.parametrize("text", ["[" * 100_000, '{"weight_map": ["a"]}', "not json"])
def test_a_forged_index_is_an_engine_error(tmp_path, text):
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(text)
    with pytest.raises(EngineError, match="weight index"):
        shard_names(str(path))


def test_a_model_the_cache_holds_is_answered_without_the_hub(fake_hub):
    resolved = model(fake_hub, {"model.safetensors": b"s" * 10})
    hf_hub_download("org/m", "model.safetensors", revision=resolved.revision)
    fake_hub.commits.clear()  # the hub knows the repository no more
    files = weight_files(resolved, token=False, timeout_s=10)
    assert files.download_bytes == 0 and files.total_bytes == 10
    assert check_download(resolved, token=False, timeout_s=10, max_bytes=1).download_bytes == 0


def test_a_download_past_the_limit_names_its_largest_files(fake_hub):
    shards = [f"m-{i}.safetensors" for i in range(5)]
    resolved = model(fake_hub, {"model.safetensors.index.json": index(*shards), **{s: b"x" for s in shards}},
                     sizes={s: (i + 1) * 10**9 for i, s in enumerate(shards)})
    with pytest.raises(WeightsTooLarge) as refused:
        check_download(resolved, token=False, timeout_s=10, max_bytes=10 * 10**9)
    assert "15.0 GB to download" in str(refused.value)
    assert "m-4.safetensors (5.0 GB), m-3.safetensors (4.0 GB), m-2.safetensors (3.0 GB) and 2 more" in str(refused.value)


def test_the_worker_times_out_a_stalled_download_after_the_hubs_timeout(fake_hub, monkeypatch):
    from huggingface_hub import constants

    from engine.models.hub_files import HubLimits
    from engine.run.runner import _check_hub_weights

    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", constants.HF_HUB_DOWNLOAD_TIMEOUT)  # restored after
    resolved = model(fake_hub, {"model.safetensors": b"s" * 10})
    _check_hub_weights(resolved, False, HubLimits(timeout_s=7.5, max_bytes=100))
    assert constants.HF_HUB_DOWNLOAD_TIMEOUT == 7.5
