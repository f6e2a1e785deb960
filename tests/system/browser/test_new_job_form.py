"""The New job form in a real browser: a user logs in, follows "New job", uploads a corpus from the
form, fills the form in, sees a layer beyond the model refused next to its field with what was
typed kept, checks the memory of the fixed request, and lands on the page of the job it made."""
import re

import pytest

from corpora.services import corpus_add
from tests.system.browser.conftest import By, login, wait_for, wait_for_text, wait_for_url
from tests.model_fixtures import SAMPLE_CORPUS
from training.models import TrainingJob

try:
    from selenium.webdriver.support.ui import Select
except ImportError:  # the browser fixture skips these tests, saying what to install
    pass

pytestmark = pytest.mark.django_db(transaction=True)


def fill(browser, name, value):
    field = browser.find_element(By.ID, f"id_{name}")
    field.clear()
    field.send_keys(value)


@pytest.mark.slow
def test_a_user_uploads_a_corpus_then_fixes_a_refused_layer_checks_memory_and_starts_a_job(
        browser, live_server, screenshot, alice, hub_models):
    corpus_add(owner=alice, name="reviews.txt", chunks=[SAMPLE_CORPUS.read_bytes()])
    login(browser, live_server, "alice", "alice-password-1")
    browser.find_element(By.ID, "nav-new-job").click()
    wait_for(browser, "#new-job-form")
    assert browser.find_element(By.ID, "id_layer_number").get_attribute("value") == "12"  # the seed's default

    # A second corpus, uploaded from the form: the page comes back with it chosen.
    browser.find_element(By.CSS_SELECTOR, "#upload summary").click()
    browser.find_element(By.ID, "id_file").send_keys(str(SAMPLE_CORPUS))
    browser.find_element(By.ID, "upload-corpus").click()
    wait_for_text(browser, "#upload-messages", f"Uploaded {SAMPLE_CORPUS.name}")
    corpus = Select(browser.find_element(By.ID, "id_corpus_file"))
    assert corpus.first_selected_option.get_attribute("value") == SAMPLE_CORPUS.name
    assert sorted(o.get_attribute("value") for o in corpus.options) == ["", SAMPLE_CORPUS.name, "reviews.txt"]

    fill(browser, "model_name", "tiny/gpt2")
    corpus.select_by_value("reviews.txt")
    fill(browser, "layer_number", "7")
    fill(browser, "hidden_dim", "16")
    fill(browser, "max_epochs", "2")
    browser.find_element(By.ID, "create-job").click()

    error = wait_for(browser, "#row-layer_number .field-errors")
    assert error.text == "layer_number 7 is out of range: tiny/gpt2 has 3 layers, so choose 0 to 2."
    # Next to its field: in the row that holds the layer_number input, and in no other row.
    row = browser.find_element(By.ID, "row-layer_number")
    assert row.find_element(By.ID, "id_layer_number") and row.find_element(By.CSS_SELECTOR, ".field-errors") == error
    assert len(browser.find_elements(By.CSS_SELECTOR, ".field-errors")) == 1
    assert not browser.find_elements(By.ID, "form-errors")
    assert browser.find_element(By.ID, "id_model_name").get_attribute("value") == "tiny/gpt2"  # kept
    assert browser.find_element(By.ID, "id_hidden_dim").get_attribute("value") == "16"
    assert Select(browser.find_element(By.ID, "id_corpus_file")).first_selected_option.get_attribute("value") == "reviews.txt"
    browser.execute_script("document.getElementById('row-layer_number').scrollIntoView()")
    screenshot("new-job-form-error")

    fill(browser, "layer_number", "1")
    browser.find_element(By.ID, "check-memory").click()
    verdict = wait_for(browser, "#memory-verdict")
    assert re.match(r"(Fits|Does not fit): needs about [\d.]+ [KMG]B, [\d.]+ [KMG]B available on ", verdict.text)
    assert browser.find_element(By.ID, "disk-verdict").text.startswith("Disk: fits")
    assert not browser.find_elements(By.CSS_SELECTOR, ".field-errors")
    assert not TrainingJob.objects.exists()  # checking makes no job
    screenshot("new-job-form-memory-check")

    browser.find_element(By.ID, "create-job").click()
    wait_for(browser, "#curve-loss")  # the job's page
    [job] = TrainingJob.objects.all()
    wait_for_url(browser, f"{live_server}/jobs/{job.id}/")
    assert browser.find_element(By.ID, "status").text == "queued"
    assert (job.owner, job.model_name, job.layer_number, job.hidden_dim) == (alice, "tiny/gpt2", 1, 16)
    assert job.status == TrainingJob.Status.QUEUED
