"""Production settings: `check --deploy` is clean, and a server with DEBUG off refuses a missing or
weak secret key. Each case is a real `manage.py` process with exactly the environment given."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
STRONG_KEY = "k8Jq2vX9rT4mW7pL1sN6bY3cF0hD5gZ8aE2uI7oQ4wR9tY1xC6vB3nM0lK5jH8gF"


def manage(tmp_path, *args, **env):
    base = {name: value for name, value in os.environ.items() if not name.startswith("MISTUDIO_")}
    env = {**base, "MISTUDIO_DATA_DIR": str(tmp_path / "data"), **env}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_deploy_check_passes_under_production_settings(tmp_path):
    done = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING",
                  MISTUDIO_DEBUG="0", MISTUDIO_SECRET_KEY=STRONG_KEY, MISTUDIO_ALLOWED_HOSTS="sae.example.org",
                  MISTUDIO_CSRF_TRUSTED_ORIGINS="https://sae.example.org")
    assert done.returncode == 0, done.stderr
    assert "no issues" in done.stdout


def test_a_server_without_debug_refuses_to_start_without_a_secret_key(tmp_path):
    done = manage(tmp_path, "check", MISTUDIO_DEBUG="0")
    assert done.returncode != 0
    assert done.stderr.startswith("manage.py: Set MISTUDIO_SECRET_KEY")
    assert not (tmp_path / "data" / "secret_key").exists()


def test_a_server_without_debug_refuses_a_weak_secret_key(tmp_path):
    done = manage(tmp_path, "check", MISTUDIO_DEBUG="0", MISTUDIO_SECRET_KEY="a" * 60)
    assert done.returncode != 0
    assert "MISTUDIO_SECRET_KEY is too weak" in done.stderr


@pytest.mark.slow
def test_a_debug_server_starts_with_a_generated_key_kept_in_the_data_folder(tmp_path):
    done = manage(tmp_path, "check", MISTUDIO_DEBUG="1")
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "data" / "secret_key").read_text().strip()) >= 50


@pytest.mark.slow
def test_https_is_on_by_default_without_debug_and_off_on_request(tmp_path):
    code = ("from django.conf import settings as s; "
            "print(s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS > 0)")
    on = manage(tmp_path, "shell", "-c", code, MISTUDIO_DEBUG="0", MISTUDIO_SECRET_KEY=STRONG_KEY)
    off = manage(tmp_path, "shell", "-c", code, MISTUDIO_DEBUG="0", MISTUDIO_SECRET_KEY=STRONG_KEY, MISTUDIO_HTTPS="0")
    assert on.stdout.splitlines()[-1].split() == ["True"] * 4, on.stderr
    assert off.stdout.splitlines()[-1].split() == ["False"] * 4, off.stderr
