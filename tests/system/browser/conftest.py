"""The harness for browser tests: Debian's headless Chromium driven by Selenium against
pytest-django's live server.

    def test_something(browser, live_server, screenshot, django_user_model):
        django_user_model.objects.create_superuser("dora", password="dora-password-1")
        admin_login(browser, live_server, "dora", "dora-password-1")
        browser.get(live_server + "/gpus/")
        screenshot("gpu-page")   # test-artifacts/browser/gpu-page.png

Tests that use `live_server` need `@pytest.mark.django_db(transaction=True)`: the server answers
from another thread, which only sees committed rows. One browser serves a whole module; `login`
starts from no cookies, so tests do not depend on each other's sessions.

Without Chromium (or selenium) the tests skip, saying what to install; under CI (CI=true, as .ci/run
sets it) they fail instead, so a CI machine whose Chromium failed to install cannot pass silently.
"""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

try:
    from selenium import webdriver
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the `browser` fixture then skips every test, saying what to install
    webdriver = None
    By = None

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "browser"
MISSING = ("Chromium browser tests need Debian's chromium and chromium-driver: "
           "apt-get install -y chromium chromium-driver (.ci/run installs them)")
WAIT_S = 10


def wait_for(browser, css):
    """The first element matching `css`, once the page shows it."""
    return WebDriverWait(browser, WAIT_S).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)))


def wait_for_text(browser, css, text):
    """Wait until the element matching `css` shows `text`; the page may still be loading or reloading."""
    WebDriverWait(browser, WAIT_S, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(
        lambda driver: text in driver.find_element(By.CSS_SELECTOR, css).text)


def wait_for_url(browser, url):
    """Wait until a click or a submit has taken the browser to `url`."""
    WebDriverWait(browser, WAIT_S).until(expected_conditions.url_to_be(url))


def browser_errors(browser):
    """The console's errors since the last call (reading the log empties it), each as its text."""
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def admin_login(browser, live_server, username, password):
    """Log in through the real admin login form (staff only)."""
    _submit_login(browser, live_server + "/admin/login/", username, password)
    # Staff land on the admin index; anyone else stays on the form with a message.
    wait_for(browser, "#user-tools, .errornote")


def login(browser, live_server, username, password):
    """Log in through the pages' own login form (any user), landing on the job list."""
    _submit_login(browser, live_server + "/accounts/login/", username, password)
    wait_for(browser, "#jobs, #login-error")


def _submit_login(browser, url, username, password):
    browser.get(url)
    browser.delete_all_cookies()  # a fresh session: the database is emptied between tests
    browser.get(url)
    browser.find_element(By.ID, "id_username").send_keys(username)
    browser.find_element(By.ID, "id_password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()


def under_ci() -> bool:
    """Whether this run is CI's (CI set true, as CI services and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def missing(what: str):
    """Skip a browser test for want of `what`; fail it under CI, where the browser tests must run."""
    if under_ci():
        pytest.fail(f"{what} (CI is set, so the browser tests may not skip)", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module; nothing is downloaded (Selenium Manager never runs)."""
    if webdriver is None:
        missing(MISSING + "; and selenium: pip install -r requirements-dev.txt")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        missing(MISSING)
    profile = tempfile.mkdtemp(prefix="mistudio-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                     "--window-size=1280,1000"):
        options.add_argument(argument)
    # The console, for browser_errors(): a Content-Security-Policy violation is logged there.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def screenshot(browser):
    """screenshot(name) saves the page as test-artifacts/browser/<name>.png and returns the path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def save(name):
        path = ARTIFACTS / f"{name}.png"
        browser.save_screenshot(str(path))
        return path

    return save


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.browser_failed = report.failed
    return report


@pytest.fixture(autouse=True)
def _screenshot_on_failure(request):
    """A failing browser test leaves what the browser showed: test-artifacts/browser/FAILED-<test>.png."""
    failure = ARTIFACTS / f"FAILED-{request.node.name}.png"
    failure.unlink(missing_ok=True)  # a stale one from an earlier run would mislead
    yield
    browser = request.node.funcargs.get("browser")
    if browser is not None and getattr(request.node, "browser_failed", False):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(failure))
