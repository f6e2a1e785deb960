"""A finished sweep in a real browser: the job list groups its members under it with their EV
and L0, its page draws both fronts with one dot per member linking to the member's page, and
someone else gets a 404 page."""
import pytest

from tests.system.browser.conftest import By, login, wait_for
from tests.training.worker.test_sweep_run import make_sweep
from training.worker.sweep import sweep_run

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def finished_sweep(alice, hub_models):
    sweep = make_sweep(alice, [{}, {"k": 8}], layers=(0, 1), max_epochs=1)
    return sweep_run(sweep.id)


@pytest.mark.slow
def test_an_owner_sees_the_members_grouped_and_the_sweeps_fronts(browser, live_server, screenshot, finished_sweep):
    members = list(finished_sweep.jobs.order_by("created_at", "pk"))
    login(browser, live_server, "alice", "alice-password-1")
    group = wait_for(browser, f'#jobs tr.sweep-row[data-sweep="{finished_sweep.id}"]')
    assert "4 members" in group.text
    rows = browser.find_elements(By.CSS_SELECTOR, "#jobs tr.member-row")
    assert {row.get_attribute("data-job") for row in rows} == {job.id for job in members}
    first = browser.find_element(By.CSS_SELECTOR, f'#jobs tr[data-job="{members[0].id}"]')
    assert first.find_element(By.CSS_SELECTOR, "td.ev").text == f"{members[0].evaluation['explained_variance']:.4f}"
    assert first.find_element(By.CSS_SELECTOR, "td.l0").text == f"{members[0].evaluation['l0']:.2f}"
    screenshot("jobs-grouped-by-sweep")

    group.find_element(By.CSS_SELECTOR, "a").click()
    wait_for(browser, "#front-ev circle.dot")
    for front in ("front-ev", "front-ce"):  # a causal LM: both fronts
        dots = browser.find_elements(By.CSS_SELECTOR, f"#{front} circle.dot")
        assert len(dots) == 4, front
    assert len(browser.find_elements(By.CSS_SELECTOR, "#front-ev circle.group-0")) == 2  # layer 0's two members
    assert f"{finished_sweep.lm_forward_batches} forward batches" in browser.find_element(By.ID, "pass").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#members tr.member")) == 4
    screenshot("sweep-page")
    link = browser.find_element(By.CSS_SELECTOR, "#front-ev a").get_dom_attribute("href")  # an SVG link
    assert link in {f"/jobs/{job.id}/" for job in members}
    browser.get(live_server + link)
    assert wait_for(browser, "#sweep a").get_attribute("href").endswith(f"/sweeps/{finished_sweep.id}/")


@pytest.mark.slow
def test_someone_else_gets_a_404_page_for_a_sweep(browser, live_server, alice, hub_models, bob):
    queued = make_sweep(alice, [{}], layers=(1,))  # its page answers 404 to bob whatever its state
    login(browser, live_server, "bob", "bob-password-1")
    browser.get(f"{live_server}/sweeps/{queued.id}/")
    assert "Not Found" in browser.page_source or "not found" in browser.page_source.lower()
    assert not browser.find_elements(By.CSS_SELECTOR, "#members")
