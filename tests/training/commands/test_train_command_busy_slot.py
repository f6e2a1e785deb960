"""`manage.py train` when another job holds this machine's worker slot: the terminal waits for the
slot and trains the job itself, rather than handing it to a background worker. Real processes: the
command runs in its own process against its own SQLite file; the holder is a job leased by another."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.django_fixtures import own_sqlite_database
from tests.training.commands.test_train_command import last_json

ROOT = Path(__file__).resolve().parents[3]

HOLD_THE_SLOT = """
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone
from gpus.services import lease_acquire
from training.models import TrainingJob

owner = get_user_model().objects.create(username="bob")
# A job another process (the test's own, alive throughout) is training on this host's slot.
holder = TrainingJob.objects.create(owner=owner, model_name="other/model", status="running",
                                    worker_host=settings.HOST_NAME, worker_pid={pid},
                                    heartbeat_at=timezone.now())
assert lease_acquire(holder)
print(holder.pk)
"""

RELEASE_THE_SLOT = """
from gpus.services import lease_release
from training.models import TrainingJob

holder = TrainingJob.objects.get(pk="{holder}")
TrainingJob.objects.filter(pk=holder.pk).update(status="completed")
lease_release(holder)
"""

# What every live worker's watchdog runs now and then (gpus.services._watchdog).
WATCHDOG = """
from training.recovery import jobs_recover_stale, jobs_requeue_orphans
print(jobs_recover_stale() + jobs_requeue_orphans())
"""

WAITING_JOB = """
import json
from django_q.models import OrmQ
from training.models import TrainingJob

job = TrainingJob.objects.exclude(pk="{holder}").get()
print(json.dumps({{"id": job.pk, "status": job.status, "phase": job.phase, "message": job.message,
                  "attempts": job.attempts, "queued_tasks": OrmQ.objects.count()}}))
"""

CANCEL_THE_WAITING_JOB = """
from training.models import TrainingJob
from training.services import job_cancel

job_cancel(TrainingJob.objects.exclude(pk="{holder}").get())
"""


@pytest.fixture
def cli(tmp_path):
    env = {**os.environ, "MISTUDIO_DATA_DIR": str(tmp_path / "cli-data"), "MISTUDIO_MODELS_DIR": str(tmp_path / "cli-models"),
           "DATABASE_URL": own_sqlite_database(tmp_path), "MISTUDIO_WORKER_SEEN_INTERVAL_S": "0.2",
           "MISTUDIO_HEARTBEAT_INTERVAL_S": "0.5"}
    env.pop("REDIS_URL", None)  # the ORM broker: a task put on the queue shows in the command's database
    activations = tmp_path / "acts.npy"
    np.save(activations, np.random.default_rng(0).normal(size=(2000, 16)).astype(np.float32))

    class Cli:
        def shell(self, code):
            done = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""

        def start_train(self):
            self.stderr_path = tmp_path / "train.stderr"
            return subprocess.Popen(
                [sys.executable, "manage.py", "train", "--activations", str(activations), "--hidden-dim", "32",
                 "--max-epochs", "2", "--min-loss", "0", "--sae-batch-tokens", "512", "--no-progress"],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self.stderr_path.open("w"), text=True)

        def wait_for_stderr(self, process, needle, timeout_s=120):
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if needle in self.stderr_path.read_text():
                    return
                assert process.poll() is None, self.stderr_path.read_text()
                time.sleep(0.2)
            raise AssertionError(f"{needle!r} never appeared on stderr: {self.stderr_path.read_text()}")

        def waiting_job(self, holder):
            return json.loads(self.shell(WAITING_JOB.format(holder=holder)))

    return Cli()


@pytest.mark.slow
def test_it_waits_for_a_busy_slot_and_then_trains_in_the_terminal(cli):
    holder = cli.shell(HOLD_THE_SLOT.format(pid=os.getpid()))
    process = cli.start_train()
    try:
        cli.wait_for_stderr(process, f"job {holder} trains on it")
        time.sleep(1.5)  # several of the command's lease attempts, and heartbeats, while it waits
        assert process.poll() is None  # still waiting, not given up
        waiting = cli.waiting_job(holder)
        assert (waiting["status"], waiting["phase"]) == ("running", "waiting")
        assert "Waiting for GPU slot" in waiting["message"]
        # A worker's watchdog leaves it alone: its process is alive and its heartbeat is fresh.
        assert cli.shell(WATCHDOG) == "[]"
        cli.shell(RELEASE_THE_SLOT.format(holder=holder))
        stdout, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = cli.stderr_path.read_text()
    assert process.returncode == 0, stderr
    assert "was busy" not in stderr
    result = last_json(stdout)
    assert stdout.rstrip().endswith("}")
    assert result["status"] == "completed" and result["job_id"] == waiting["id"]
    assert result["training_stats"]["total_epochs"] == 2
    ended = cli.waiting_job(holder)
    # Trained here, once, and never handed to the queue.
    assert ended["attempts"] == 1 and ended["queued_tasks"] == 0


@pytest.mark.slow
def test_a_job_waiting_for_the_slot_can_be_cancelled(cli):
    holder = cli.shell(HOLD_THE_SLOT.format(pid=os.getpid()))
    process = cli.start_train()
    try:
        cli.wait_for_stderr(process, "Waiting for GPU slot")
        cli.shell(CANCEL_THE_WAITING_JOB.format(holder=holder))
        stdout, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1
    result = last_json(stdout)
    assert result["status"] == "cancelled"
    assert "Cancelled while waiting for the GPU slot" in cli.stderr_path.read_text()
    assert cli.waiting_job(holder)["queued_tasks"] == 0
