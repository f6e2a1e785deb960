"""GGUF models: the bundled SmolLM2 and a user's .gguf resolve, are described from their metadata
alone, and load through one conversion into a cache folder that concurrent workers share."""
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.errors import ModelResolutionError
from engine.models.gguf import converted_folder, gguf_identity
from engine.models.loading import load_model
from engine.models.info import describe_model
from engine.models.resolve import BUNDLED_CAUSAL_LM_NAME, load_config, resolve_model
from tests.model_fixtures import write_tiny_gguf
from tests.network import outside_network_blocked, unreachable_hub  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[3]


def header_parameter_count(gguf_file: Path) -> int:
    import gguf

    return sum(int(tensor.n_elements) for tensor in gguf.GGUFReader(gguf_file).tensors)


def test_the_bundled_smollm2_resolves_offline_to_its_gguf(tmp_path, unreachable_hub):
    resolved = resolve_model(BUNDLED_CAUSAL_LM_NAME, models_dir=tmp_path)
    assert resolved.source == "bundled"
    assert resolved.gguf_file.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and resolved.gguf_file.is_file()


@pytest.mark.slow
def test_smollm2_is_described_from_its_gguf_header(smollm2_gguf):
    resolved = resolve_model(BUNDLED_CAUSAL_LM_NAME, models_dir=None)
    info = describe_model(resolved, load_config(resolved))
    assert (info.architecture, info.total_layers, info.hidden_size, info.vocab_size) == ("llama", 30, 576, 49152)
    assert info.is_causal_lm is True
    assert info.parameter_count == header_parameter_count(smollm2_gguf) == 134_515_008


@pytest.mark.slow
def test_smollm2_loads_through_the_resolution_path_and_knows_paris(smollm2_converted, test_models_cache):
    resolved = resolve_model(BUNDLED_CAUSAL_LM_NAME, models_dir=None)
    loaded = load_model(resolved, device="cpu", with_lm_head=True, models_cache_dir=test_models_cache)
    assert len(loaded.blocks) == 30
    assert sum(p.numel() for p in loaded.model.parameters()) == describe_model(resolved, load_config(resolved)).parameter_count
    tokenizer, model = loaded.tokenizer, loaded.model

    prompt = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        next_id = model(prompt).logits[0, -1].argmax().item()
    assert tokenizer.decode([next_id]) == " Paris"

    sentence = tokenizer("The weather was cold, so she wore a warm coat and a scarf when she went outside.",
                         return_tensors="pt").input_ids
    with torch.inference_mode():
        perplexity = math.exp(model(sentence, labels=sentence).loss.item())
    assert perplexity < 100  # a random model of this vocabulary scores about 50,000


@pytest.mark.slow
def test_the_converted_tokenizer_splits_text_as_the_gguf_does(smollm2_gguf, smollm2_converted):
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    saved = AutoTokenizer.from_pretrained(smollm2_converted)
    sentence = "Sparse autoencoders decompose activations into interpretable features."
    assert saved(sentence).input_ids == original(sentence).input_ids
    assert (saved.bos_token, saved.eos_token) == ("<|im_start|>", "<|im_end|>")


def test_a_gguf_in_the_models_dir_is_described_without_converting(tiny_gguf_file, tmp_path):
    models = tmp_path / "models"
    (models / "tiny" / "llama-gguf").mkdir(parents=True)
    shutil.copy(tiny_gguf_file, models / "tiny" / "llama-gguf" / "tiny-llama.gguf")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for name in ("tiny/llama-gguf", "tiny/llama-gguf/tiny-llama.gguf"):
        resolved = resolve_model(name, models_dir=models, local_roots=[models])
        assert resolved.source == "models_dir"
        assert resolved.gguf_file == (models / "tiny" / "llama-gguf" / "tiny-llama.gguf").resolve()
        info = describe_model(resolved, load_config(resolved))
        assert (info.architecture, info.total_layers, info.hidden_size, info.vocab_size) == ("llama", 2, 32, 1001)
        assert info.parameter_count == header_parameter_count(tiny_gguf_file)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_local_gguf_file_or_its_folder_resolves_inside_the_allowed_roots(tiny_gguf_file, tmp_path):
    mine = tmp_path / "models" / "mine"
    mine.mkdir(parents=True)
    shutil.copy(tiny_gguf_file, mine / "model.gguf")
    for path in (mine, mine / "model.gguf"):
        resolved = resolve_model(str(path), models_dir=None, local_roots=[tmp_path / "models"])
        assert (resolved.source, resolved.gguf_file) == ("local", (mine / "model.gguf").resolve())


def test_a_gguf_outside_the_allowed_roots_is_refused_as_any_path_is(tiny_gguf_file, tmp_path):
    with pytest.raises(ModelResolutionError, match="outside the folders this server loads models from"):
        resolve_model(str(tiny_gguf_file), models_dir=tmp_path, local_roots=[tmp_path])


def test_a_folder_of_several_ggufs_asks_for_one_by_name(tiny_gguf_file, tmp_path):
    for name in ("model.Q4_K_M.gguf", "model.Q8_0.gguf"):
        shutil.copy(tiny_gguf_file, tmp_path / name)
    with pytest.raises(ModelResolutionError, match=r"holds 2 GGUF files .*name the one to load, e\.g\. '.*model\.Q4_K_M\.gguf'"):
        resolve_model(str(tmp_path), models_dir=None)


def test_a_gguf_of_an_architecture_transformers_cannot_load_says_so(tmp_path):
    unsupported = write_tiny_gguf(tmp_path / "command-r.gguf", architecture="command-r")
    resolved = resolve_model(str(unsupported), models_dir=None)
    with pytest.raises(ModelResolutionError, match="holds a 'command-r' model, which the installed transformers .* cannot load"):
        load_config(resolved)


def test_a_file_that_is_not_a_gguf_is_a_resolution_error(tmp_path):
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ModelResolutionError, match="Could not read the GGUF metadata of 'fake.gguf'"):
        load_config(resolve_model(str(tmp_path / "fake.gguf"), models_dir=None))


def test_a_local_gguf_loads_from_one_conversion_that_later_loads_reuse(tiny_gguf_file, tmp_path):
    cache = tmp_path / "converted"
    resolved = resolve_model(str(tiny_gguf_file), models_dir=None)
    first = load_model(resolved, device="cpu", with_lm_head=True, models_cache_dir=cache)
    folders = [p for p in cache.iterdir() if p.is_dir()]
    assert [p.name for p in folders] == [gguf_identity(tiny_gguf_file)]
    assert (folders[0] / "model.safetensors").is_file() and (folders[0] / "tokenizer.json").is_file()
    written = (folders[0] / "model.safetensors").stat().st_mtime_ns

    second = load_model(resolved, device="cpu", with_lm_head=True, models_cache_dir=cache)
    assert (folders[0] / "model.safetensors").stat().st_mtime_ns == written
    assert len(second.blocks) == 2 and type(second.model).__name__ == "LlamaForCausalLM"
    ids = first.tokenizer("Hello world", return_tensors="pt").input_ids
    with torch.inference_mode():
        assert torch.equal(first.model(ids).logits, second.model(ids).logits)


def test_a_gguf_loads_without_a_cache_folder_too(tiny_gguf_file):
    loaded = load_model(resolve_model(str(tiny_gguf_file), models_dir=None), device="cpu")
    assert len(loaded.blocks) == 2 and loaded.tokenizer.pad_token == "<|endoftext|>"


def test_a_different_gguf_never_reuses_another_ones_conversion(tiny_gguf_file, tmp_path):
    other = write_tiny_gguf(tmp_path / "tiny-llama.gguf", seed=1)
    assert other.name == tiny_gguf_file.name and other.stat().st_size == tiny_gguf_file.stat().st_size
    assert gguf_identity(other) != gguf_identity(tiny_gguf_file)
    shutil.copy(tiny_gguf_file, tmp_path / "copy.gguf")
    assert gguf_identity(tmp_path / "copy.gguf").split("-")[-1] == gguf_identity(tiny_gguf_file).split("-")[-1]


# Each worker says it is ready (torch and transformers imported), waits for the go file, then
# loads the model as a job's run does, and says whether it was the one that converted.
_WORKER = """
import os, sys, time
from pathlib import Path
import torch, transformers
import engine.models.gguf
from engine.models.loading import load_model
from engine.models.resolve import resolve_model

convert = engine.models.gguf._convert
def counted(gguf_file, folder):
    print("converting", flush=True)
    convert(gguf_file, folder)
engine.models.gguf._convert = counted

gguf_file, cache, go = sys.argv[1:]
Path(f"{go}.ready.{os.getpid()}").touch()
while not Path(go).exists():
    time.sleep(0.01)
loaded = load_model(resolve_model(gguf_file, models_dir=None), device="cpu", models_cache_dir=Path(cache))
print("blocks", len(loaded.blocks), flush=True)
"""


@pytest.mark.slow
def test_two_workers_converting_at_once_share_one_folder(tiny_gguf_file, tmp_path):
    cache, go = tmp_path / "converted", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tiny_gguf_file), str(cache), str(go)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
               for _ in range(2)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.ready.*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()  # both are past their imports: they reach the lock together
    outputs = [worker.communicate(timeout=300) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], [err[-2000:] for _, err in outputs]
    assert all("blocks 2" in out for out, _ in outputs)
    assert sum(out.count("converting") for out, _ in outputs) == 1
    assert sorted(p.name for p in cache.iterdir()) == sorted([gguf_identity(tiny_gguf_file),
                                                               f"{gguf_identity(tiny_gguf_file)}.lock"])
    assert converted_folder(tiny_gguf_file, cache) == cache / gguf_identity(tiny_gguf_file)
