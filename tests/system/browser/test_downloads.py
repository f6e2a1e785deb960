"""A finished job's page links its downloads, in a real browser: the owner logs in, follows the
metadata link and Chromium saves the file; the archive's link answers the browser's session
cookie with the zip of the job's SAELens folder."""
import io
import json
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.system.browser.conftest import WAIT_S, By, login, wait_for

try:
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the browser fixture skips these tests, saying what to install
    pass
from tests.training.artifacts.test_feature_browser import trained as finished_job  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.slow
def test_the_owner_follows_the_download_links_of_a_finished_job(browser, live_server, screenshot, tmp_path,
                                                                 finished_job):  # noqa: F811 (the fixture)
    login(browser, live_server, "alice", "alice-password-1")
    browser.get(f"{live_server}/jobs/{finished_job.id}/")
    wait_for(browser, "#downloads a.download")
    links = {a.get_attribute("data-artifact"): a for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a.download")}
    assert list(links) == ["saelens", "weights", "metadata"]
    for artifact, link in links.items():
        assert link.get_attribute("href") == f"{live_server}/api/v1/train/{finished_job.id}/download?artifact={artifact}"
    browser.execute_script("document.getElementById('downloads').scrollIntoView({block: 'center'})")
    screenshot("job-page-downloads")

    # Clicking a link downloads the file, named for the job.
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    links["metadata"].click()
    saved = tmp_path / f"{finished_job.id}_metadata.json"
    WebDriverWait(browser, WAIT_S).until(lambda _: saved.is_file())
    assert json.loads(saved.read_text())["job_id"] == finished_job.id

    # The same URL answers the page's session cookie, with no token: the zip of the SAELens folder.
    cookie = browser.get_cookie("sessionid")
    request = urllib.request.Request(links["saelens"].get_attribute("href"),
                                     headers={"Cookie": f"sessionid={cookie['value']}"})
    with urllib.request.urlopen(request) as response:
        assert response.status == 200 and response.headers["Content-Type"] == "application/zip"
        body = response.read()
    folder = Path(finished_job.exports["saelens"])
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.read(f"{finished_job.id}_saelens/sae_weights.safetensors") == \
            (folder / "sae_weights.safetensors").read_bytes()
