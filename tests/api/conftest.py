"""What the API's request tests share."""
import pytest


@pytest.fixture
def corpus(upload, sample_corpus_bytes):
    """alice's sample corpus, uploaded as reviews.txt: the name a request's corpus_file gives."""
    assert upload("reviews.txt", sample_corpus_bytes).status_code == 200
    return "reviews.txt"
