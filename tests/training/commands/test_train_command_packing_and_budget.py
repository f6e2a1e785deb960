"""`manage.py train --packing --training-tokens --cache-activations`: a real subprocess, as the
API takes them; a bad name or an empty budget is a clear error, before anything runs."""
import numpy as np
import pytest

from tests.model_fixtures import SAMPLE_CORPUS
from tests.training.commands.test_train_command import OWN_DATABASE, last_json, train_command

pytestmark = OWN_DATABASE


@pytest.fixture
def run_train(tmp_path, django_db_blocker):
    return train_command(tmp_path)


@pytest.mark.slow
def test_it_takes_a_packing_a_token_budget_and_a_cache_mode_and_the_result_shows_them(run_train, tiny_gpt2_dir):
    done = run_train("--model", str(tiny_gpt2_dir), "--corpus", str(SAMPLE_CORPUS), "--layer-number", "1",
                     "--packing", "concat", "--training-tokens", "3000", "--cache-activations", "never",
                     "--hidden-dim", "16", "--max-epochs", "2", "--min-loss", "0", "--max-sequence-length", "16",
                     "--sae-batch-tokens", "256", "--no-progress")
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["status"] == "completed"
    assert (result["packing"], result["training_tokens"], result["cache_activations"]) == ("concat", 3000, "never")
    assert result["disk_plan"]["cache"] is False
    assert result["disk_plan"]["reason"].startswith("cache_activations is never")


@pytest.mark.slow
def test_a_txt_corpus_gets_lines_and_an_activations_file_keeps_only_its_budget(run_train, tiny_gpt2_dir, tmp_path):
    done = run_train("--model", str(tiny_gpt2_dir), "--corpus", str(SAMPLE_CORPUS), "--layer-number", "1",
                     "--hidden-dim", "16", "--max-epochs", "1", "--min-loss", "0", "--max-sequence-length", "16",
                     "--sae-batch-tokens", "256", "--no-progress")
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert (result["packing"], result["training_tokens"], result["cache_activations"]) == ("lines", None, "auto")
    np.save(tmp_path / "acts.npy", np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32))
    done = run_train("--activations", str(tmp_path / "acts.npy"), "--packing", "concat", "--training-tokens", "500",
                     "--hidden-dim", "16", "--max-epochs", "1", "--min-loss", "0", "--sae-batch-tokens", "256",
                     "--no-progress")
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert (result["packing"], result["training_tokens"], result["cache_activations"]) == (None, 500, None)


@pytest.mark.parametrize("args,needle", [
    (("--packing", "words"), 'packing: "words" is not a packing: choose one of lines, documents, concat.'),
    (("--cache-activations", "sometimes"), "choose one of auto, always, never"),
    (("--training-tokens", "0"), "training_tokens: a budget is at least 1 token"),
    (("--training-tokens", "many"), "--training-tokens: invalid int value"),
])
@pytest.mark.slow
def test_a_bad_packing_cache_mode_or_budget_is_a_clear_error(run_train, tmp_path, args, needle):
    np.save(tmp_path / "acts.npy", np.zeros((10, 4), np.float32))
    done = run_train("--activations", str(tmp_path / "acts.npy"), *args)
    assert done.returncode != 0
    assert needle in done.stderr
    assert "Traceback" not in done.stderr
