"""The web process reads a hub model's tokenizer (to estimate a job's disk plan) only within limits:
the repository's file sizes are asked first and a tokenizer file past MISTUDIO_TOKENIZER_MAX_BYTES is
never downloaded, and the whole load gets the hub's timeout. Past either, the plan falls back to its
upper bound and says why; the job is still made."""
import pytest

from tests.fake_hub import fake_hub  # noqa: F401 - the fixture
from training import services

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def corpus(upload, sample_corpus_bytes):
    assert upload("reviews.txt", sample_corpus_bytes).status_code == 200


def request():
    return services.JobRequest(model_name="org/tiny-gpt2", corpus_file="reviews.txt", layer_number=1, hidden_dim=32,
                               max_epochs=1, min_loss=0, max_sequence_length=16)


@pytest.mark.slow
def test_a_tokenizer_file_past_the_limit_is_never_downloaded(alice, corpus, fake_hub, tiny_gpt2_dir, settings):
    files = {p.name: p.read_bytes() for p in tiny_gpt2_dir.iterdir() if p.is_file()}
    files["tokenizer.json"] = files["tokenizer.json"] + b" " * (2 << 20)  # 2 MiB more of a tokenizer file
    fake_hub.push("org/tiny-gpt2", files)
    settings.TOKENIZER_MAX_BYTES = 1 << 20
    job = services.job_create(owner=alice, request=request(), enqueue=False)
    assert "the tokenizer could not be read (EngineError)" in job.disk_plan["tokens_estimated_from"]
    assert not [path for path in fake_hub.file_paths() if path.endswith(("/vocab.json", "/merges.txt", "/tokenizer.json"))]


@pytest.mark.slow
def test_within_the_limit_the_tokenizer_measures_the_corpus(alice, corpus, fake_hub, tiny_gpt2_dir, settings):
    fake_hub.push_folder("org/tiny-gpt2", tiny_gpt2_dir)
    job = services.job_create(owner=alice, request=request(), enqueue=False)
    assert "measured with the model's tokenizer" in job.disk_plan["tokens_estimated_from"]
