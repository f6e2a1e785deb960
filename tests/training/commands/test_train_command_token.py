"""`manage.py train` takes a Hugging Face token without putting it on its command line, where `ps`
shows it to every user of the machine: from a file (--huggingface-token-file) or from stdin
(--huggingface-token -). The hub hears that token, and never the server's own login."""
import os
import subprocess
import sys

import pytest

from tests.django_fixtures import own_sqlite_database
from tests.model_fixtures import SAMPLE_CORPUS
from tests.fake_hub import SERVER_SAVED_TOKEN, SERVER_TOKEN, fake_hub  # noqa: F401 - the fixture
from tests.training.commands.test_train_command import OWN_DATABASE, ROOT

USER_TOKEN = "hf_USER_token_from_a_file_or_stdin_42"
ARGS = ["--model", "org/tiny-gpt2", "--corpus", str(SAMPLE_CORPUS), "--layer-number", "1", "--hidden-dim", "32",
        "--max-epochs", "1", "--min-loss", "0", "--max-sequence-length", "16", "--no-progress"]
pytestmark = OWN_DATABASE


@pytest.fixture
def served(fake_hub, tiny_gpt2_dir):
    fake_hub.push_folder("org/tiny-gpt2", tiny_gpt2_dir)
    return fake_hub


@pytest.mark.slow
@pytest.mark.parametrize("given", ["file", "stdin"])
def test_the_token_reaches_the_hub_from_a_file_or_stdin(tmp_path, served, given):
    env = migrated_env(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(f"{USER_TOKEN}\n")
    option = ["--huggingface-token-file", str(token_file)] if given == "file" else ["--huggingface-token", "-"]
    command = [sys.executable, "manage.py", "train", *ARGS, *option]
    done = subprocess.run(command, cwd=ROOT, env=env, input=f"{USER_TOKEN}\n", capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert USER_TOKEN not in " ".join(command)
    heard = served.authorizations()
    assert f"Bearer {USER_TOKEN}" in heard
    assert not heard & {f"Bearer {SERVER_TOKEN}", f"Bearer {SERVER_SAVED_TOKEN}"}
    assert USER_TOKEN not in done.stdout + done.stderr


@pytest.mark.slow
def test_an_empty_token_file_or_both_options_are_refused(tmp_path, served):
    env = migrated_env(tmp_path)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for option in (["--huggingface-token-file", str(empty)],
                   ["--huggingface-token-file", str(tmp_path / "missing")],
                   ["--huggingface-token-file", str(empty), "--huggingface-token", USER_TOKEN]):
        done = subprocess.run([sys.executable, "manage.py", "train", *ARGS, *option], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 1 and "--huggingface-token" in done.stderr and "Traceback" not in done.stderr
    assert served.requests == []


def migrated_env(folder):
    """The command's environment (the fake hub's included), with a migrated database of its own."""
    env = {**os.environ, "MISTUDIO_DATA_DIR": str(folder / "cli-data"), "MISTUDIO_MODELS_DIR": str(folder / "cli-models"),
           "DATABASE_URL": own_sqlite_database(folder)}
    return env
