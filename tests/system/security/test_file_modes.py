"""What miStudio writes is private to its account: the data folder 0700 and every file in it 0600
from the start, even when the process was started with a permissive umask. Real `manage.py`
processes, each with exactly the environment given."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.model_fixtures import SAMPLE_CORPUS

ROOT = Path(__file__).resolve().parents[3]


def manage(data, *args, debug="1", timeout=300):
    env = {name: value for name, value in os.environ.items() if not name.startswith(("MISTUDIO_", "DATABASE_URL"))}
    env.update(MISTUDIO_DATA_DIR=str(data), MISTUDIO_DEBUG=debug, MISTUDIO_CPU_BF16="off", MISTUDIO_HTTPS="0")
    # The shell's usual mask: without miStudio's own, everything would come out 0644 and 0755.
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=lambda: os.umask(0o022))


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DATABASE_URL", "").startswith("postgres"),
                    reason="the embedded SQLite database is the one created here; runs in `make test`")
def test_the_data_folder_the_database_the_key_a_corpus_and_a_jobs_artifacts_are_private(tmp_path, tiny_gpt2_dir):
    data = tmp_path / "own-data"
    for args in (("migrate", "-v0"),
                 ("add_corpus", str(SAMPLE_CORPUS)),
                 ("train", "--model", str(tiny_gpt2_dir), "--corpus", SAMPLE_CORPUS.name, "--layer-number", "1",
                  "--hidden-dim", "16", "--max-epochs", "1", "--min-loss", "0", "--batch-size", "8",
                  "--max-sequence-length", "16", "--sae-batch-tokens", "256")):
        done = manage(data, *args)
        assert done.returncode == 0, done.stderr

    folders = [data, *(path for path in data.rglob("*") if path.is_dir())]
    files = [path for path in data.rglob("*") if path.is_file()]
    names = sorted(str(path.relative_to(data)) for path in files)
    assert {"db.sqlite3", "secret_key"} <= set(names)
    assert any(name.startswith("samples/") and name.endswith(".txt") for name in names), names  # the corpus
    assert any(name.endswith(".safetensors") for name in names), names  # the SAE
    assert {str(path.relative_to(tmp_path)): oct(mode(path)) for path in folders if mode(path) != 0o700} == {}
    assert {str(path.relative_to(tmp_path)): oct(mode(path)) for path in files if mode(path) != 0o600} == {}


@pytest.mark.slow
def test_processes_started_together_keep_one_generated_key(tmp_path):
    data = tmp_path / "own-data"
    data.mkdir()
    env = {name: value for name, value in os.environ.items() if not name.startswith("MISTUDIO_")}
    env.update(MISTUDIO_DATA_DIR=str(data), MISTUDIO_DEBUG="1")
    code = "from django.conf import settings; print(settings.SECRET_KEY)"
    processes = [subprocess.Popen([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    keys = {process.communicate(timeout=120)[0].strip() for process in processes}
    assert len(keys) == 1 and len(keys.pop()) >= 50
    assert mode(data / "secret_key") == 0o600


@pytest.mark.slow
def test_a_data_folder_other_accounts_can_enter_is_warned_about_at_start(tmp_path):
    data = tmp_path / "own-data"
    assert manage(data, "check").returncode == 0
    assert mode(data) == 0o700
    data.chmod(0o755)
    done = manage(data, "check")
    assert done.returncode == 0  # a warning: the operator may share it on purpose
    assert "mistudio.W001" in done.stderr and f"{data} has mode 0755" in done.stderr
    assert f"chmod -R go-rwx {data}" in done.stderr
    assert mode(data) == 0o755  # left as it was


@pytest.mark.slow
def test_collected_static_files_stay_readable_by_the_web_server(tmp_path):
    static = tmp_path / "public-static"
    env_done = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=ROOT,
        env={**os.environ, "MISTUDIO_DATA_DIR": str(tmp_path / "own-data"), "MISTUDIO_STATIC_ROOT": str(static)},
        capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(0o022))
    assert env_done.returncode == 0, env_done.stderr
    css = static / "admin" / "css" / "base.css"
    assert mode(css) == 0o644 and mode(css.parent) == 0o755
    assert mode(tmp_path / "own-data") == 0o700
