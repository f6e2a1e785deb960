"""A finished job's page and one of its features' page, in a real browser: an owner logs in
through the login form, sees the curves, the density histogram and the feature list drawn by the
pages' own scripts, and follows a feature to its highlighted contexts."""
import pytest

from tests.system.browser.conftest import By, login, wait_for, wait_for_text

try:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the browser fixture skips these tests, saying what to install
    pass
from tests.training.artifacts.test_feature_browser import trained as finished_job  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.slow
def test_an_owner_browses_curves_features_and_a_features_contexts(browser, live_server, screenshot, finished_job):
    login(browser, live_server, "alice", "alice-password-1")
    assert browser.find_elements(By.CSS_SELECTOR, f'#jobs a[href="/jobs/{finished_job.id}/"]')
    browser.get(f"{live_server}/jobs/{finished_job.id}/")
    for chart in ("curve-loss", "curve-l0", "curve-ev"):
        line = wait_for(browser, f"#{chart} path.series")
        assert int(line.get_attribute("data-points")) >= 2, chart
        assert line.get_attribute("d").count("L") >= 1
    assert browser.find_elements(By.CSS_SELECTOR, "#density rect.bin")
    runs = browser.find_elements(By.CSS_SELECTOR, "#runs tr.run-row")
    assert len(runs) == 1 and "completed" in runs[0].text  # one run, not resumed
    browser.execute_script("document.getElementById('runs').scrollIntoView()")
    screenshot("job-page-runs")
    wait_for(browser, "#feature-table tr.feature-row")
    rows = browser.find_elements(By.CSS_SELECTOR, "#feature-table tr.feature-row")
    assert 1 <= len(rows) <= 48
    wait_for_text(browser, "#feature-count", "of 48 features")
    screenshot("job-page")

    # Sorting by index, ascending, puts feature 0 first.
    browser.find_element(By.CSS_SELECTOR, "#feature-sort option[value=index]").click()
    browser.find_element(By.CSS_SELECTOR, "#feature-order option[value=asc]").click()
    wait_for_text(browser, "#feature-table tr.feature-row td", "#0")

    # The most frequent feature, then its page.
    browser.find_element(By.CSS_SELECTOR, "#feature-sort option[value=frequency]").click()
    browser.find_element(By.CSS_SELECTOR, "#feature-order option[value=desc]").click()
    wait_for_text(browser, "#feature-count", "of 48 features")
    # Each change of the selects redraws the table: read the link once the redraws have settled.
    target = WebDriverWait(browser, 10, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda driver: driver.find_element(By.CSS_SELECTOR, "#feature-table tr.feature-row a").get_attribute("href"))
    browser.get(target)
    assert wait_for(browser, "#activation-histogram rect.bin")
    contexts = browser.find_elements(By.CSS_SELECTOR, "#contexts tr.context-row")
    assert 1 <= len(contexts) <= 5
    peak = contexts[0].find_element(By.CSS_SELECTOR, ".tok.peak")
    assert "47, 111, 222" in peak.get_attribute("style")  # shaded by its activation (the strongest: full colour)
    assert browser.find_elements(By.CSS_SELECTOR, "#promoted span") and browser.find_elements(By.CSS_SELECTOR, "#suppressed span")
    screenshot("feature-page")


@pytest.mark.slow
def test_someone_else_gets_a_404_page_and_no_feature_list(browser, live_server, finished_job, bob):
    login(browser, live_server, "bob", "bob-password-1")
    browser.get(f"{live_server}/jobs/{finished_job.id}/")
    assert not browser.find_elements(By.CSS_SELECTOR, "#curve-loss")
    assert "Not Found" in browser.page_source
