"""`manage.py train` from a terminal: a real subprocess, the same path as the worker."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.django_fixtures import own_sqlite_database
from tests.model_fixtures import SAMPLE_CORPUS

ROOT = Path(__file__).resolve().parents[3]
# Tests through train_command run their jobs on SQLite databases of their own whatever the suite's
# database: the scale-out run (PostgreSQL, `make test-scaleout`) would only repeat them.
OWN_DATABASE = pytest.mark.skipif(os.environ.get("DATABASE_URL", "").startswith("postgres"),
                                  reason="on a SQLite database of its own; runs in `make test`")
pytestmark = OWN_DATABASE


def train_command(folder):
    """`manage.py train` as a subprocess, with a migrated database and data folders of its own in `folder`."""
    env = {**os.environ, "MISTUDIO_DATA_DIR": str(folder / "cli-data"), "MISTUDIO_MODELS_DIR": str(folder / "cli-models"),
           "DATABASE_URL": own_sqlite_database(folder)}

    def run(*args, extra_env=None):
        return subprocess.run([sys.executable, "manage.py", "train", *args], cwd=ROOT, env={**env, **(extra_env or {})},
                               capture_output=True, text=True, timeout=300)

    return run


@pytest.fixture
def run_train(tmp_path, django_db_blocker):
    return train_command(tmp_path)


def last_json(stdout):
    start = stdout.rindex("\n{") + 1 if "\n{" in stdout else stdout.index("{")
    return json.loads(stdout[start:])


@pytest.mark.slow
def test_it_trains_from_a_model_and_a_corpus_path_and_prints_the_result_last(run_train, tiny_gpt2_dir):
    done = run_train("--model", str(tiny_gpt2_dir), "--corpus", str(SAMPLE_CORPUS), "--layer-number", "2",
                     "--hidden-dim", "48", "--max-epochs", "3", "--min-loss", "0", "--batch-size", "8",
                     "--max-sequence-length", "16", "--sae-batch-tokens", "256", "--learning-rate", "0.001")
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert done.stdout.rstrip().endswith("}")
    assert result["status"] == "completed" and result["feature_count"] == 48
    assert result["training_stats"]["total_epochs"] == 3
    assert result["model_info"]["selected_layer"] == 2 and result["ready_for_find_service"] is True
    assert "epoch 3/3" in done.stderr  # the progress bar
    assert f"{tiny_gpt2_dir} on layer 2" in done.stderr
    # MISTUDIO_CPU_BF16=off (pytest.ini): float32 throughout, and the job says so.
    assert result["training_stats"]["compute_dtype"] == "float32"
    assert result["training_stats"]["extraction"]["dtype"] == "float32"


@pytest.mark.slow
def test_it_takes_a_hook_point_and_the_special_token_switches(run_train, tiny_llama_dir):
    done = run_train("--model", str(tiny_llama_dir), "--corpus", str(SAMPLE_CORPUS), "--layer-number", "1",
                     "--hook-point", "attn_out", "--no-exclude-special-tokens", "--no-prepend-bos",
                     "--hidden-dim", "16", "--max-epochs", "1", "--min-loss", "0", "--max-sequence-length", "16",
                     "--sae-batch-tokens", "256", "--no-progress")
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert (result["hook_point"], result["exclude_special_tokens"], result["prepend_bos"]) == ("attn_out", False, False)
    cfg = json.loads((Path(result["exports"]["saelens"]) / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_attn_out"
    assert (cfg["metadata"]["prepend_bos"], cfg["metadata"]["exclude_special_tokens"]) == (False, False)


@pytest.mark.slow
def test_with_cpu_bf16_on_the_model_and_the_sae_compute_in_bfloat16(run_train, tiny_llama_dir):
    args = ["--model", str(tiny_llama_dir), "--corpus", str(SAMPLE_CORPUS), "--layer-number", "1",
            "--hidden-dim", "64", "--max-epochs", "3", "--min-loss", "0", "--batch-size", "8",
            "--max-sequence-length", "16", "--sae-batch-tokens", "256", "--learning-rate", "0.001", "--no-progress"]
    bf16 = run_train(*args, extra_env={"MISTUDIO_CPU_BF16": "on"})
    fp32 = run_train(*args)
    assert bf16.returncode == 0, bf16.stderr
    stats, reference = last_json(bf16.stdout)["training_stats"], last_json(fp32.stdout)["training_stats"]
    assert stats["compute_dtype"] == "bfloat16" and stats["extraction"]["dtype"] == "bfloat16"
    # bf16 rounds the activations and the SAE's matmuls; the training must still end where float32 does.
    assert stats["final_loss"] == pytest.approx(reference["final_loss"], rel=0.05)


@pytest.mark.slow
def test_it_trains_on_activations_someone_already_has(run_train, tmp_path):
    rng = np.random.default_rng(0)
    activations = rng.normal(size=(3000, 16)).astype(np.float32)
    npy, st = tmp_path / "acts.npy", tmp_path / "acts.safetensors"
    np.save(npy, activations)
    save_file({"activations": activations}, str(st))
    for path in (npy, st):
        done = run_train("--activations", str(path), "--hidden-dim", "32", "--max-epochs", "2", "--min-loss", "0",
                         "--sae-batch-tokens", "512", "--no-progress")
        assert done.returncode == 0, done.stderr
        result = last_json(done.stdout)
        assert result["status"] == "completed"
        assert result["activations_path"] == str(path)
        assert result["training_stats"]["feature_statistics"]["total_features"] == 32
        # No model, so no layer: the terminal says what it trains on.
        assert f"an SAE on the activations in {path}" in done.stderr and "on layer" not in done.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (("--activations", "/nonexistent/acts.npy"), "no such file"),
        (("--model", "x"), "--corpus"),
        (("--batch-size", "500", "--activations", "ACTS"), "batch_size"),
        (("--activations", "BAD"), "shape"),
        (("--hook-point", "resid_mid", "--activations", "ACTS"), "choose one of resid_post, resid_pre, mlp_out, attn_out"),
    ],
)
@pytest.mark.slow
def test_bad_options_get_a_clear_error(run_train, tmp_path, args, needle):
    np.save(tmp_path / "good.npy", np.zeros((10, 4), np.float32))
    np.save(tmp_path / "bad.npy", np.zeros(10, np.float32))
    args = [a.replace("ACTS", str(tmp_path / "good.npy")).replace("BAD", str(tmp_path / "bad.npy")) for a in args]
    done = run_train(*args)
    assert done.returncode != 0
    assert needle in done.stderr
    assert "Traceback" not in done.stderr
