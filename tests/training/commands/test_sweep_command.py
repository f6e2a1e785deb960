"""`manage.py train --sweep FILE` from a terminal: a real subprocess, the sweep's whole run, its
document printed last."""
import json

import pytest
import yaml

from tests.model_fixtures import SAMPLE_CORPUS
from tests.training.commands.test_train_command import OWN_DATABASE, last_json, run_train  # noqa: F401 (fixture)

pytestmark = OWN_DATABASE


@pytest.mark.slow
def test_a_yaml_sweep_trains_every_member_and_prints_the_sweep_document(run_train, tmp_path, tiny_gpt2_dir):
    request = {"model_name": str(tiny_gpt2_dir), "corpus_file": str(SAMPLE_CORPUS), "layers": [0, 1],
               "max_sequence_length": 16, "hidden_dim": 32, "max_epochs": 1, "sae_batch_tokens": 256,
               "architecture": "topk", "k": 4, "members": [{}, {"k": 8}]}
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump(request))
    done = run_train("--sweep", str(file), "--no-progress")
    assert done.returncode == 0, done.stderr
    document = last_json(done.stdout)
    assert document["status"] == "completed" and document["members_count"] == 4
    assert document["lm_forward_batches"] > 0 and document["tokens_extracted"] > 0
    assert [(m["layer_number"], m["settings"]) for m in document["members"]] == [
        (0, {}), (0, {"k": 8}), (1, {}), (1, {"k": 8})]
    assert all(m["metrics"]["l0"] > 0 for m in document["members"])
    assert document["members"][0]["job_id"] in done.stderr and "completed" in done.stderr


@pytest.mark.slow
def test_a_bad_sweep_file_says_what_is_wrong_and_trains_nothing(run_train, tmp_path, tiny_gpt2_dir):
    file = tmp_path / "sweep.json"
    file.write_text("{not json")
    done = run_train("--sweep", str(file))
    assert done.returncode != 0 and "is not valid JSON" in done.stderr
    file.write_text(json.dumps({"model_name": str(tiny_gpt2_dir), "corpus_file": str(SAMPLE_CORPUS),
                                "members": [{"max_sequence_length": 8}]}))
    done = run_train("--sweep", str(file))
    assert done.returncode != 0 and "members[0].max_sequence_length: cannot differ between members" in done.stderr
    done = run_train("--sweep", str(file), "--layer-number", "1")
    assert done.returncode != 0 and "give --layer-number in the file instead" in done.stderr


@pytest.mark.slow
def test_the_switches_force_and_text_field_beside_a_sweep_are_refused_not_dropped(run_train, tmp_path, tiny_gpt2_dir):
    file = tmp_path / "sweep.json"
    file.write_text(json.dumps({"model_name": str(tiny_gpt2_dir), "corpus_file": str(SAMPLE_CORPUS), "max_epochs": 1}))
    done = run_train("--sweep", str(file), "--no-prepend-bos", "--exclude-special-tokens", "--force",
                     "--text-field", "body")
    assert done.returncode != 0
    assert "give --exclude-special-tokens, --no-prepend-bos, --force, --text-field in the file instead" in done.stderr
    assert "Sweep " not in done.stderr  # nothing was made
    done = run_train("--sweep", str(file), "--prepend-bos", "--no-exclude-special-tokens")
    assert "give --no-exclude-special-tokens, --prepend-bos in the file instead" in done.stderr
