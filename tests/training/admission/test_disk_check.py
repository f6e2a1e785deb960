"""The disk a run needs, checked when it is asked for: a cache that cannot fit the data folder is
a 400 that says how large and what to change when the job asks to cache; `auto` streams the
activations instead and is accepted; the plan stays on the job; check-memory reports the same
plan beside the memory check. The free space is made small by replacing engine.disk.free_bytes,
which the check looks up when it runs."""
import pytest

from engine import disk
from training.models import TrainingJob

pytestmark = pytest.mark.django_db

# The tiny GPT-2 (d_model 32) on the sample corpus: its cache is some hundreds of kB, 2 checkpoints
# of a 16-feature SAE some tens; 1024 features take more than a MB.
SMALL_DISK = 200_000


@pytest.fixture
def small_disk(monkeypatch):
    monkeypatch.setattr(disk, "free_bytes", lambda folder: SMALL_DISK)
    return SMALL_DISK


def train(client, **fields):
    return client.post("/api/v1/train", {"model_name": "tiny/gpt2", "corpus_file": "reviews.txt", "layer_number": 1,
                                         "hidden_dim": 16, "max_epochs": 5, **fields}, format="json")


def check_memory(client, **query):
    return client.get("/api/v1/check-memory/tiny/gpt2", {"hidden_dim": 16, "max_epochs": 5, **query})


@pytest.mark.slow
def test_a_job_whose_cache_fits_caches_it_and_keeps_the_plan_with_a_measured_token_count(alice_api, corpus, hub_models):
    response = train(alice_api)
    assert response.status_code == 200, response.json()
    job = TrainingJob.objects.get(pk=response.json()["job_id"])
    plan = job.disk_plan
    assert plan["cache"] is True and plan["passes"] == 5
    # Worked out by hand: a row is 32 float16 values and an int32 token id (68 B), plus 4,096 B of
    # .npy headers; a checkpoint is 12 B (float32 weights and Adam's two moments) for each of the
    # 2 x 32 x 16 weights, 2 x 16 encoder biases and thresholds and 32 decoder biases (1,088), two kept.
    assert plan["cache_bytes"] == plan["rows_per_pass"] * 68 + 4096
    assert plan["needed_bytes"] == plan["cache_bytes"] + 2 * 1088 * 12
    # GPT-2's tokenizer on English text: several bytes per token, measured, not assumed.
    assert 2 < plan["bytes_per_token"] < 8
    assert "measured with the model's tokenizer on the corpus's first" in plan["reason"]
    assert alice_api.get(f"/api/v1/train/{job.id}/status").json()["disk_plan"] == plan


def test_a_cache_that_cannot_fit_is_a_400_at_submission_when_the_job_asks_to_cache(alice_api, corpus, hub_models,
                                                                                    small_disk):
    response = train(alice_api, cache_activations="always")
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail.startswith("This run needs ") and "an activation cache of " in detail
    assert "the data folder has 200.0 kB free" in detail
    assert "Set cache_activations to auto or never" in detail
    assert not TrainingJob.objects.exists()


def test_auto_streams_the_activations_of_a_run_whose_cache_cannot_fit_and_is_accepted(alice_api, corpus, hub_models,
                                                                                      small_disk):
    response = train(alice_api)
    assert response.status_code == 200, response.json()
    plan = TrainingJob.objects.get(pk=response.json()["job_id"]).disk_plan
    assert plan["cache"] is False and plan["cache_bytes"] == 0 and plan["free_bytes"] == SMALL_DISK
    assert "would not fit the free disk" in plan["reason"] and "every one of the 5 passes runs the model" in plan["reason"]


def test_a_single_pass_streams_whatever_the_disk(alice_api, corpus, hub_models):
    response = train(alice_api, max_epochs=1)
    plan = TrainingJob.objects.get(pk=response.json()["job_id"]).disk_plan
    assert (plan["cache"], plan["passes"]) == (False, 1)
    assert plan["reason"].startswith("the run reads its activations once")


def test_checkpoints_that_cannot_fit_are_a_400_even_when_the_activations_stream(alice_api, corpus, hub_models,
                                                                                small_disk):
    response = train(alice_api, hidden_dim=1024, cache_activations="never")
    assert response.status_code == 400
    assert "(checkpoints of " in response.json()["detail"] and "Lower hidden_dim" in response.json()["detail"]


@pytest.mark.slow
def test_without_its_tokenizer_the_plan_counts_a_byte_per_token_and_says_so(alice_api, corpus, hub_models):
    # A folder whose tokenizer file is damaged: the child that measures says it could not read it.
    (hub_models / "tiny" / "gpt2" / "tokenizer.json").write_text("{not a tokenizer")
    response = train(alice_api)
    assert response.status_code == 200, response.json()
    plan = TrainingJob.objects.get(pk=response.json()["job_id"]).disk_plan
    assert plan["bytes_per_token"] == 1.0
    assert "1 byte per token (an upper bound): the tokenizer could not be read (" in plan["reason"]


def test_check_memory_reports_no_disk_check_without_a_corpus(alice_api, hub_models):
    body = check_memory(alice_api).json()
    assert body["disk_check"] == {"sufficient": None, "reason": "give corpus_file to estimate the disk a run needs"}
    assert body["memory_check"]["sufficient"] is True


def test_check_memory_reports_the_disk_a_run_on_the_corpus_needs(alice_api, corpus, hub_models):
    check = check_memory(alice_api, corpus_file=corpus).json()["disk_check"]
    assert {"cache", "passes", "estimated_tokens_per_pass", "cache_gb", "checkpoints_gb", "needed_gb", "free_gb",
            "sufficient", "reason"} <= set(check)
    assert (check["cache"], check["passes"], check["sufficient"]) == (True, 5, True)
    assert check["estimated_tokens_per_pass"] > 1000 and check["free_gb"] > 0
    budget = check_memory(alice_api, corpus_file=corpus, training_tokens=100, packing="concat").json()["disk_check"]
    assert (budget["cache"], budget["passes"]) == (False, 1)


def test_check_memory_says_what_to_change_when_the_cache_cannot_fit(alice_api, corpus, hub_models, small_disk):
    check = check_memory(alice_api, corpus_file=corpus, cache_activations="always").json()["disk_check"]
    assert check["sufficient"] is False and check["cache"] is True and check["cache_gb"] > 0
    assert "Set cache_activations to auto or never" in check["reason"]
    assert check_memory(alice_api, corpus_file=corpus).json()["disk_check"]["sufficient"] is True


def test_check_memory_answers_400_for_a_corpus_that_is_not_the_users_or_a_bad_mode(alice_api, hub_models):
    response = check_memory(alice_api, corpus_file="missing.txt")
    assert response.status_code == 400 and "Corpus file 'missing.txt' not found" in response.json()["detail"]
    response = check_memory(alice_api, cache_activations="sometimes")
    assert response.status_code == 400
    assert response.json()["detail"] == (
        'cache_activations: "sometimes" is not a cache mode: choose one of auto, always, never.')


def test_a_corpus_file_that_cannot_be_read_is_estimated_at_a_byte_per_token_and_left_to_the_run(
        alice_api, corpus, hub_models):
    from pathlib import Path

    from corpora.models import Corpus

    Path(Corpus.objects.get(name=corpus).path).unlink()
    response = train(alice_api)
    assert response.status_code == 200, response.json()
    plan = TrainingJob.objects.get(pk=response.json()["job_id"]).disk_plan
    assert "1 byte per token (an upper bound): the corpus could not be read (FileNotFoundError)" in plan["reason"]


def test_the_sample_of_a_txt_corpus_is_its_first_whole_lines(tmp_path):
    from training.admission.disk import CorpusFacts

    path = tmp_path / "c.txt"
    path.write_text("first line\n\n  second line  \nthird line that is cut\n", encoding="utf-8")
    facts = CorpusFacts(path=path, format="txt", text_field="text", default_packing="lines", text_bytes=60,
                        documents=3, lines=3)
    assert facts.sample(max_bytes=30) == ["first line", "second line"]
    assert facts.sample() == ["first line", "second line", "third line that is cut"]
    path.write_text("x" * 100, encoding="utf-8")
    assert facts.sample(max_bytes=10) == ["x" * 10]


def test_the_jobs_queued_before_count_against_the_free_disk(alice_api, corpus, hub_models, monkeypatch):
    first = train(alice_api, cache_activations="always")
    assert first.status_code == 200, first.json()
    planned = TrainingJob.objects.get().disk_plan["needed_bytes"]
    # Room for one such run, not two: the first, queued, has not written its cache yet.
    monkeypatch.setattr(disk, "free_bytes", lambda folder: planned + planned // 2)
    response = train(alice_api, cache_activations="always")
    assert response.status_code == 400
    assert f"the data folder has {disk.size_text(planned // 2)} free" in response.json()["detail"]
    TrainingJob.objects.update(status=TrainingJob.Status.RUNNING, attempts=1)  # it writes now: the disk shows it
    assert train(alice_api, cache_activations="always").status_code == 200
