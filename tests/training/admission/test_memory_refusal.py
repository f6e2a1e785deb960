"""A job whose memory estimate exceeds the memory of the device it would run on (here, with no
GPU, the machine's RAM) is a 400 that says what it needs, what the device has and what to lower;
staff may create it anyway with `force: true` (its memory_check then says so), anyone else asking
to force gets a 403. A sweep whose member cannot fit is refused the same way."""
import pytest

from engine.devices import system_memory
from training.models import TrainingJob

pytestmark = pytest.mark.django_db

# The largest SAE the API takes: its one minibatch of features alone is terabytes.
HUGE = {"hidden_dim": 1_048_576, "sae_batch_tokens": 1_048_576}
REQUEST = {"model_name": "tiny/gpt2", "corpus_file": "reviews.txt", "layer_number": 1, "hidden_dim": 16,
           "max_epochs": 1}


@pytest.fixture
def corpus_for(upload, sample_corpus_bytes):
    def make(client):
        assert upload("reviews.txt", sample_corpus_bytes, client=client).status_code == 200
    return make


def train(client, **fields):
    return client.post("/api/v1/train", {**REQUEST, **fields}, format="json")


def test_a_job_that_cannot_fit_the_device_is_a_400_saying_what_it_needs_and_has(alice_api, corpus_for, hub_models):
    corpus_for(alice_api)
    response = train(alice_api, **HUGE)
    assert response.status_code == 400
    detail = response.json()["detail"]
    ram_gb = system_memory()[0] / 1024**3
    assert detail.startswith("This job needs about ") and " GB of memory (the SAE " in detail
    assert f"but system RAM (no GPU) has {ram_gb:.1f} GB in all" in detail
    assert "lower hidden_dim (now 1048576) or sae_batch_tokens (now 1048576)" in detail
    assert "Staff may create it anyway with force: true." in detail
    assert not TrainingJob.objects.exists()


def test_staff_may_force_it_and_the_job_says_it_was_forced(charlie_api, corpus_for, hub_models):
    corpus_for(charlie_api)
    response = train(charlie_api, force=True, **HUGE)
    assert response.status_code == 200, response.json()
    assert response.json()["memory_check"].startswith("forced: needs about ")
    assert TrainingJob.objects.get().memory_check.startswith("forced: ")


@pytest.mark.slow
def test_the_train_command_may_force_it_for_its_user(tmp_path, monkeypatch, hub_models):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    from training.management.commands import train as command

    corpus = tmp_path / "reviews.txt"
    corpus.write_text("A review of a film.\nAnother one.\n")
    args = ["--model", "tiny/gpt2", "--corpus", str(corpus), "--layer-number", "1", "--hidden-dim", "1048576",
            "--sae-batch-tokens", "1048576", "--max-epochs", "1", "--no-progress"]
    with pytest.raises(CommandError, match="Staff may create it anyway"):
        call_command("train", *args)
    # Forced, the job is made for the command's user (not staff) and handed to the run, which this
    # test stops short of: an SAE of that size would not fit here.
    handed = []
    monkeypatch.setattr(command, "job_run", lambda job_id, **_: handed.append(job_id) or TrainingJob.objects.get(id=job_id))
    with pytest.raises(CommandError, match="Waiting for a worker"):  # the stub ran nothing: the job is queued
        call_command("train", *args, "--force")
    job = TrainingJob.objects.get(id=handed[0])
    assert job.owner.username == "cli" and not job.owner.is_staff
    assert job.memory_check.startswith("forced: ")


def test_staff_must_ask_to_force_it(charlie_api, corpus_for, hub_models):
    corpus_for(charlie_api)
    assert train(charlie_api, **HUGE).status_code == 400


def test_anyone_else_asking_to_force_is_a_403(alice_api, corpus_for, hub_models):
    corpus_for(alice_api)
    response = train(alice_api, force=True)
    assert response.status_code == 403
    assert response.json()["detail"].startswith("force: only staff may create a job")
    assert not TrainingJob.objects.exists()


def test_a_job_that_fits_passes_whether_forced_or_not(charlie_api, corpus_for, hub_models):
    corpus_for(charlie_api)
    assert train(charlie_api).json()["memory_check"] == "passed"
    assert train(charlie_api, force=True).json()["memory_check"] == "passed"


def test_a_sweep_whose_member_cannot_fit_is_a_400_and_a_403_for_anyone_else_forcing(alice_api, corpus_for,
                                                                                     hub_models):
    corpus_for(alice_api)
    sweep = {**REQUEST, "members": [{}, HUGE]}
    response = alice_api.post("/api/v1/sweeps", sweep, format="json")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("members[1] at layer 1, resid_post: This job needs about ")
    assert alice_api.post("/api/v1/sweeps", {**sweep, "force": True}, format="json").status_code == 403
    assert not TrainingJob.objects.exists()


def test_an_evaluation_logits_budget_larger_than_the_device_is_a_400_naming_the_setting(
        alice_api, corpus_for, hub_models, settings):
    # Refused before anything trains, not after: the evaluation's logits are part of the estimate.
    corpus_for(alice_api)
    settings.EVAL_LOGITS_BYTES = 2**50
    response = train(alice_api)
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "the evaluation's logits and hidden states " in detail
    assert f"lower MISTUDIO_EVAL_LOGITS_BYTES (now {2**50:,}) or batch_size (now 16)" in detail
    assert not TrainingJob.objects.exists()
