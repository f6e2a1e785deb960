"""A newcomer's first look: `manage.py <command> --help` and `manage.py help` answer without the
environment a run needs (DEBUG off, no MISTUDIO_SECRET_KEY, no data folder) and write nothing, while
a real run without a key stops with one line saying what to set. Each case is a real `manage.py`
process with a scrubbed environment."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
# Every command of ours, found as Django finds them, so that a new one is covered as it lands.
OURS = sorted(path.stem for path in ROOT.glob("*/management/commands/*.py") if not path.stem.startswith("_"))
# Django's and django-q2's, which read the same settings.
THEIRS = ["migrate", "runserver", "shell", "qcluster", "createsuperuser"]


def manage(tmp_path, *args):
    """`manage.py args` with nothing of the environment but a PATH, and a data folder that does not exist."""
    env = {"PATH": "/usr/bin:/bin", "MISTUDIO_DATA_DIR": str(tmp_path / "fresh-data")}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_our_commands_are_the_ones_the_brief_names():
    assert {"train", "demo", "issue_token", "add_corpus", "purge_artifacts", "gpu_worker"} <= set(OURS)


@pytest.mark.slow
@pytest.mark.parametrize("command", OURS + THEIRS)
def test_a_commands_help_needs_no_environment(tmp_path, command):
    done = manage(tmp_path, command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert f"usage: manage.py {command}" in done.stdout
    assert not (tmp_path / "fresh-data").exists()


@pytest.mark.slow
def test_the_list_of_commands_needs_no_environment_and_lists_ours(tmp_path):
    done = manage(tmp_path, "help")
    assert done.returncode == 0, done.stderr
    assert "settings are not properly configured" not in done.stdout + done.stderr
    listed = set(done.stdout.split())
    assert set(OURS) <= listed
    assert not (tmp_path / "fresh-data").exists()


@pytest.mark.slow
def test_a_run_without_a_key_stops_with_one_line_saying_what_to_set(tmp_path):
    done = manage(tmp_path, "issue_token", "alice")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("manage.py: Set MISTUDIO_SECRET_KEY")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "fresh-data" / "secret_key").exists()


@pytest.mark.slow
def test_help_after_a_double_dash_is_a_value_not_a_request_for_help(tmp_path):
    done = manage(tmp_path, "train", "--", "--help")
    assert done.returncode == 1
    assert done.stderr.startswith("manage.py: Set MISTUDIO_SECRET_KEY")
