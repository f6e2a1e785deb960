"""Every page works under the Content-Security-Policy with no violation in the browser's console:
the pages' inline styles and scripts carry the page's nonce, bars take their width from a script,
Swagger UI and the admin load from this origin. A script injected into a page does not run."""
import pytest

from tests.system.browser.conftest import By, browser_errors, login, wait_for
from tests.training.artifacts.test_feature_browser import trained as finished_job  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db(transaction=True)


def violations(browser):
    return [message for message in browser_errors(browser) if "Content Security Policy" in message]


@pytest.mark.slow
def test_the_pages_work_with_no_policy_violation(browser, live_server, screenshot, finished_job, django_user_model):
    browser.get(live_server + "/accounts/login/")
    browser_errors(browser)  # a fresh log for this test
    login(browser, live_server, "alice", "alice-password-1")
    # The job list: its bar drawn at the job's progress, from data-share.
    bar = wait_for(browser, f'#jobs a[href="/jobs/{finished_job.id}/"]').find_element(
        By.XPATH, "ancestor::tr").find_element(By.CSS_SELECTOR, ".bar > span")
    assert bar.value_of_css_property("width") == "120px"  # 100% of the 120px bar
    assert violations(browser) == []

    browser.get(f"{live_server}/jobs/{finished_job.id}/")
    assert wait_for(browser, "#curve-loss path.series") and wait_for(browser, "#feature-table tr.feature-row")
    assert browser.find_element(By.ID, "progress-bar").value_of_css_property("width") != "0px"
    feature = browser.find_element(By.CSS_SELECTOR, "#feature-table tr.feature-row a").get_attribute("href")
    browser.get(feature)
    assert wait_for(browser, "#activation-histogram rect.bin")
    assert "47, 111, 222" in browser.find_element(By.CSS_SELECTOR, ".tok.peak").get_attribute("style")
    screenshot("csp-feature-page")
    assert violations(browser) == []

    for path, ready in (("/jobs/new/", "form"), ("/sweeps/new/", "form"), ("/gpus/", "main h1"),
                        ("/api/docs/", "#swagger-ui .opblock"), ("/api/v1/jobs", "pre.prettyprint")):
        browser.get(live_server + path)
        assert wait_for(browser, ready), path
        assert violations(browser) == [], path
    # The page's own site.css applied (an inline <style> with the nonce): the header's background.
    browser.get(live_server + "/jobs/")
    assert browser.find_element(By.CSS_SELECTOR, "header.top").value_of_css_property("display") == "flex"
    screenshot("csp-jobs-page")

    django_user_model.objects.create_superuser("dora", password="dora-password-1")
    login(browser, live_server, "dora", "dora-password-1")
    for path in ("/admin/", "/admin/training/trainingjob/", f"/admin/training/trainingjob/{finished_job.id}/change/"):
        browser.get(live_server + path)
        assert wait_for(browser, "#content"), path
        assert violations(browser) == [], path


@pytest.mark.slow
def test_a_script_injected_into_a_page_is_refused_and_reported(browser, live_server, alice):
    login(browser, live_server, "alice", "alice-password-1")
    browser_errors(browser)
    browser.execute_script("""
        var injected = document.createElement("script");
        injected.textContent = "window.injectedRan = true;";
        document.body.appendChild(injected);
        var styled = document.createElement("div");
        styled.innerHTML = '<p id="styled" style="color: rgb(255, 0, 0)">x</p>';
        document.body.appendChild(styled);
    """)
    assert browser.execute_script("return window.injectedRan === true") is False
    assert browser.find_element(By.ID, "styled").value_of_css_property("color") != "rgba(255, 0, 0, 1)"
    refused = violations(browser)
    assert any("script-src" in message for message in refused), refused
    assert any("style-src" in message for message in refused), refused
