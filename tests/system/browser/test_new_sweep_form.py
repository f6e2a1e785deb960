"""The New sweep form in a real browser: a user fills in the base and the sweep's layers and
members, sees a layer beyond the model refused next to the layers field with what was typed kept,
fixes it, and lands on the sweep's page with one member per layer x member."""
import pytest

from corpora.services import corpus_add
from tests.system.browser.conftest import By, login, wait_for, wait_for_url
from tests.system.browser.test_new_job_form import fill
from tests.model_fixtures import SAMPLE_CORPUS
from training.models import Sweep

try:
    from selenium.webdriver.support.ui import Select
except ImportError:  # the browser fixture skips these tests, saying what to install
    pass

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.slow
def test_a_user_fixes_a_refused_layer_and_starts_a_sweep(browser, live_server, screenshot, alice, hub_models):
    corpus_add(owner=alice, name="reviews.txt", chunks=[SAMPLE_CORPUS.read_bytes()])
    login(browser, live_server, "alice", "alice-password-1")
    browser.find_element(By.ID, "nav-new-sweep").click()
    wait_for(browser, "#new-sweep-form")
    fill(browser, "model_name", "tiny/gpt2")
    Select(browser.find_element(By.ID, "id_corpus_file")).select_by_value("reviews.txt")
    fill(browser, "hidden_dim", "16")
    Select(browser.find_element(By.ID, "id_architecture")).select_by_value("topk")
    fill(browser, "layers", "0, 5")
    members = browser.find_element(By.ID, "id_members")
    members.send_keys("k=4\nk=8, learning_rate=0.0003")
    browser.find_element(By.ID, "create-sweep").click()

    error = wait_for(browser, "#row-layers .field-errors")
    assert error.text.startswith("members[0] at layer 5, resid_post: layer_number 5 is out of range: tiny/gpt2 has 3 layers")
    assert browser.find_element(By.ID, "row-layers").find_element(By.CSS_SELECTOR, ".field-errors") == error
    assert len(browser.find_elements(By.CSS_SELECTOR, ".field-errors")) == 1
    assert browser.find_element(By.ID, "id_members").get_attribute("value") == "k=4\nk=8, learning_rate=0.0003"
    screenshot("new-sweep-refused-layer")

    fill(browser, "layers", "0, 2")
    browser.find_element(By.ID, "create-sweep").click()
    wait_for(browser, "#members")
    sweep = Sweep.objects.get()
    wait_for_url(browser, f"{live_server}/sweeps/{sweep.id}/")
    rows = browser.find_elements(By.CSS_SELECTOR, "#members tr.member")
    assert len(rows) == 4 and "k=8, learning_rate=0.0003" in rows[1].text
    screenshot("new-sweep-started")
