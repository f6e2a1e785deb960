import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from safetensors.torch import save_file as save_torch_file

from engine.activations.cache import load_activations
from engine.errors import ActivationsError


def test_npy_files_are_memory_mapped(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((10, 4), dtype=np.float16))
    array = load_activations(tmp_path / "a.npy")
    assert isinstance(array, np.memmap) and array.shape == (10, 4)


def test_safetensors_files_are_read_from_the_activations_key(tmp_path):
    save_file({"activations": np.ones((3, 4), dtype=np.float32)}, tmp_path / "a.safetensors")
    assert load_activations(tmp_path / "a.safetensors").shape == (3, 4)


def test_bfloat16_safetensors_come_back_as_float32(tmp_path):
    save_torch_file({"activations": torch.ones(3, 4, dtype=torch.bfloat16)}, tmp_path / "a.safetensors")
    assert load_activations(tmp_path / "a.safetensors").dtype == np.float32


def test_a_one_dimensional_array_says_the_expected_shape(tmp_path):
    np.save(tmp_path / "a.npy", np.ones(10, dtype=np.float32))
    with pytest.raises(ActivationsError, match=r"shape \(10,\): expected 2-D \[tokens, d_model\]"):
        load_activations(tmp_path / "a.npy")


def test_a_single_token_is_not_enough(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((1, 4), dtype=np.float32))
    with pytest.raises(ActivationsError, match="at least 2 tokens"):
        load_activations(tmp_path / "a.npy")


def test_a_safetensors_file_without_the_key_names_the_keys_it_has(tmp_path):
    save_file({"hidden": np.ones((3, 4), dtype=np.float32)}, tmp_path / "a.safetensors")
    with pytest.raises(ActivationsError, match=r"no 'activations' tensor \(found: hidden\)"):
        load_activations(tmp_path / "a.safetensors")


def test_other_extensions_are_refused(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"x")
    with pytest.raises(ActivationsError, match=r"must be \.npy or \.safetensors, not '\.pt'"):
        load_activations(tmp_path / "a.pt")


def test_integer_arrays_are_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((3, 4), dtype=np.int32))
    with pytest.raises(ActivationsError, match="expected a float dtype"):
        load_activations(tmp_path / "a.npy")


def test_nan_values_are_found(tmp_path):
    array = np.ones((100_000, 2), dtype=np.float32)
    array[90_000, 1] = np.nan
    np.save(tmp_path / "a.npy", array)
    with pytest.raises(ActivationsError, match="NaN or infinite values"):
        load_activations(tmp_path / "a.npy")
