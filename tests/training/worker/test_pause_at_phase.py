"""The test hook MISTUDIO_PAUSE_AT_PHASE (training.worker.reporting.paused_at_phases): without it a
run's reports pass straight through; a name that is no phase is refused, saying which are.
tests/system/e2e/test_crash_recovery.py pauses real workers with it and kills them there."""
import pytest
from django.core.exceptions import ImproperlyConfigured

from training.worker.reporting import paused_at_phases


def test_without_the_hook_reports_pass_straight_through(settings):
    settings.PAUSE_AT_PHASE = []
    report = lambda update: None  # noqa: E731
    assert paused_at_phases(report) is report


@pytest.mark.parametrize("entry", ["loading", "done", "analyzing_features@2", "training@x"])
def test_an_entry_that_is_no_phase_is_refused_naming_the_phases(settings, entry):
    settings.PAUSE_AT_PHASE = [entry]
    with pytest.raises(ImproperlyConfigured, match=rf"{entry!r} is not a phase: use loading_model, .*training@N"):
        paused_at_phases(lambda update: None)


def test_reports_of_other_phases_and_earlier_epochs_go_on(settings, tmp_path):
    settings.PAUSE_AT_PHASE, settings.DATA_DIR = ["training@3", "computing_statistics"], tmp_path
    seen = []
    report = paused_at_phases(seen.append)
    updates = [{"phase": "loading"}, {"phase": "training", "epoch": 1}, {"phase": "training", "epoch": 2},
               {"phase": "analyzing"}]
    for update in updates:
        report(update)
    assert seen == updates and not (tmp_path / "paused-at-phase").exists()
