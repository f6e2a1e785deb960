"""Without Chromium the browser tests skip on a developer's machine and fail under CI, so a CI
machine whose Chromium failed to install cannot pass with none of them run."""
import pytest

from tests.system.browser import conftest


@pytest.fixture
def no_chromium(monkeypatch, tmp_path):
    monkeypatch.setattr(conftest, "CHROMIUM", tmp_path / "no-chromium")


def outcome_of_starting_a_browser():
    """The exception that ends the `browser` fixture: pytest's skip or its fail (caught either way:
    a skip escaping this test would report it skipped, not failed)."""
    with pytest.raises((pytest.skip.Exception, pytest.fail.Exception)) as ended:
        next(conftest.browser.__wrapped__())
    return ended.value


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_a_missing_chromium_fails_the_run(no_chromium, monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    ended = outcome_of_starting_a_browser()
    assert isinstance(ended, pytest.fail.Exception), ended
    assert "apt-get install -y chromium chromium-driver" in str(ended) and "CI is set" in str(ended)


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_outside_ci_a_missing_chromium_skips_saying_what_to_install(no_chromium, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    ended = outcome_of_starting_a_browser()
    assert isinstance(ended, pytest.skip.Exception), ended
    assert "apt-get install -y chromium chromium-driver" in str(ended)
