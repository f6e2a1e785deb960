"""A user's requests never borrow the server's own Hugging Face login (HF_TOKEN, or a token saved
in HF_HOME): the hub hears the user's token or none, unless the operator lends the login on purpose
(MISTUDIO_HUB_USE_SERVER_LOGIN). A fake hub on 127.0.0.1 records every request's Authorization."""
import pytest

from tests.fake_hub import SERVER_SAVED_TOKEN, SERVER_TOKEN, fake_hub  # noqa: F401 - the fixture
from training.models import TrainingJob
from training.worker.job import job_run

USER_TOKEN = "hf_USER_token_of_alice_0123456789"
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def served(fake_hub, tiny_gpt2_dir):
    fake_hub.push_folder("org/tiny-gpt2", tiny_gpt2_dir)
    return fake_hub


@pytest.mark.slow
def test_validate_model_without_a_token_sends_none(alice_api, served):
    response = alice_api.post("/api/v1/validate-model", {"model_name": "org/tiny-gpt2"}, format="json")
    assert response.status_code == 200 and response.json()["valid"] is True, response.json()
    assert served.file_paths()  # the hub was asked
    assert served.authorizations() == {None}


@pytest.mark.slow
def test_check_memory_sends_no_token(alice_api, served):
    response = alice_api.get("/api/v1/check-memory/org/tiny-gpt2")
    assert response.status_code == 200, response.json()
    assert served.file_paths()
    assert served.authorizations() == {None}


@pytest.mark.slow
def test_validate_model_with_a_users_token_sends_that_token_only(alice_api, served):
    response = alice_api.post("/api/v1/validate-model", {"model_name": "org/tiny-gpt2", "huggingface_token": USER_TOKEN},
                              format="json")
    assert response.status_code == 200 and response.json()["valid"] is True, response.json()
    assert served.authorizations() <= {f"Bearer {USER_TOKEN}", None}
    assert f"Bearer {USER_TOKEN}" in served.authorizations()


@pytest.mark.slow
def test_a_training_request_and_its_run_send_no_token(alice_api, upload, sample_corpus_bytes, served,
                                                    django_capture_on_commit_callbacks):
    assert upload("reviews.txt", sample_corpus_bytes).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_api.post("/api/v1/train", {
            "model_name": "org/tiny-gpt2", "corpus_file": "reviews.txt", "layer_number": 1, "hidden_dim": 32,
            "max_epochs": 1, "min_loss": 0, "max_sequence_length": 16,
        }, format="json")
    assert response.status_code == 200, response.json()
    asked_at_submission = len(served.file_paths())
    job = job_run(response.json()["job_id"])
    assert job.status == TrainingJob.Status.COMPLETED, job.message
    # The worker read the weights from the hub too, and never with the server's login.
    assert any(path.endswith("/model.safetensors") for path in served.file_paths()[asked_at_submission:])
    assert served.authorizations() == {None}


@pytest.mark.slow
def test_the_operator_may_lend_the_servers_login_on_purpose(alice_api, served, settings):
    settings.HUB_USE_SERVER_LOGIN = True
    response = alice_api.post("/api/v1/validate-model", {"model_name": "org/tiny-gpt2"}, format="json")
    assert response.status_code == 200 and response.json()["valid"] is True, response.json()
    assert f"Bearer {SERVER_TOKEN}" in served.authorizations()
    assert f"Bearer {SERVER_SAVED_TOKEN}" not in served.authorizations()  # HF_TOKEN comes first, as on the hub
