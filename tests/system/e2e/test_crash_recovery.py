"""Workers killed with SIGKILL (as the kernel's OOM killer does, or a reboot) lose no job: the next
worker resumes it from its last checkpoint and it ends as an uninterrupted run would; a cluster
killed whole strands none of the jobs whose tasks it had taken; a resumed job's result adds up its runs."""
import os
import signal
import time
from pathlib import Path

import pytest

from tests.model_fixtures import SAMPLE_CORPUS
from tests.system.e2e.test_worker_process import (  # noqa: F401 (fixture)
    start_cluster, submit, wait_for, worker, worker_process_env)
from training.models import TrainingJob
from training.worker.reporting import PAUSED_AT_PHASE_FOLDER

pytestmark = pytest.mark.django_db(transaction=True)

JOB = dict(max_epochs=30, min_loss=0, hidden_dim=256, architecture="topk", k=8)
# Enough optimizer steps that an epoch lasts long enough to be interrupted.
# Dense decoding pinned: a timed choice could differ between the reference job and the other.
# One BLAS thread: multi-threaded float reductions may differ from run to run under load.
STEADY = {"MISTUDIO_MIN_SAE_STEPS": "3000", "MISTUDIO_TOPK_DECODE": "dense", "OMP_NUM_THREADS": "1"}
# Where the job of the every-phase test is killed, in order, one run each (MISTUDIO_PAUSE_AT_PHASE):
# in training once epoch 3 began, so the cache is complete (an overlapped extraction ends within
# the first epoch) and the run has trained.
PAUSES = ["loading_model", "extracting_activations", "training@3", "computing_statistics", "analyzing_features"]


@pytest.fixture
def worker_env():
    return STEADY


def finished(status):
    return status["status"] in ("completed", "failed", "cancelled")


def kill_worker_paused_at(job_id, entry, data_dir, timeout_s=120):
    """SIGKILL the job's worker once it has paused at `entry` of MISTUDIO_PAUSE_AT_PHASE (it waits
    there: no phase is too short to catch); the job's row as it was then, and `checkpoints_then`, the
    number of its checkpoints."""
    marker = Path(data_dir) / PAUSED_AT_PHASE_FOLDER / entry
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        job = TrainingJob.objects.get(pk=job_id)
        assert job.status in ("queued", "running"), f"{job_id} ended ({job.status}: {job.message}) before {entry}"
        assert time.monotonic() < deadline, f"{job_id} never paused at {entry}; last: {job.status}/{job.phase}"
        time.sleep(0.05)
    pid = int(marker.read_text())
    job = TrainingJob.objects.get(pk=job_id)
    assert job.status == "running" and job.worker_pid == pid
    job.checkpoints_then = job.checkpoints.count()
    os.kill(pid, signal.SIGKILL)
    return job


def kill_cluster(process):
    """The whole cluster at once, parent included: what a reboot or `kill -9` of its group does."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    process.log.close()


@pytest.mark.slow
def test_a_job_whose_worker_is_killed_resumes_and_ends_like_an_uninterrupted_one(alice_api, upload, worker):
    assert upload(SAMPLE_CORPUS.name, SAMPLE_CORPUS.read_bytes()).status_code == 200
    reference = submit(alice_api, **JOB)
    assert wait_for(alice_api, reference, finished)["status"] == "completed"

    killed = submit(alice_api, **JOB)
    wait_for(alice_api, killed, lambda s: s["status"] == "running" and s["current_epoch"] >= 4 and s["last_checkpoint"])
    job = TrainingJob.objects.get(pk=killed)
    assert job.worker_pid and job.worker_pid != worker.pid  # a worker process, not the cluster
    os.kill(job.worker_pid, signal.SIGKILL)

    done = wait_for(alice_api, killed, finished)
    assert done["status"] == "completed", done
    job.refresh_from_db()
    assert job.attempts == 2
    assert job.training_stats["total_epochs"] == JOB["max_epochs"]
    expected = TrainingJob.objects.get(pk=reference).training_stats["final_loss"]
    # The same order, weights, optimizer moments and dead-feature counters: the same end, up to the
    # float noise of a different process.
    assert job.training_stats["final_loss"] == pytest.approx(expected, rel=1e-3)
    # Both runs extracted once: the resumed run reused the first run's activations.
    assert job.activations_path.endswith(f"{killed}_activations.npy")


@pytest.mark.slow
def test_a_job_killed_in_every_phase_ends_as_an_uninterrupted_one_and_adds_up_its_runs(
        alice_api, upload, settings, hub_models, tmp_path):
    # Six runs allowed: one killed in each of five phases, then one that finishes. One checkpoint,
    # at the end: a run killed in training finds the cache complete and no checkpoint. Each run pauses
    # at the next phase of PAUSES (a test hook) and is killed there; the reference job, after them,
    # finds every pause taken and runs through.
    # No epoch needs to last long enough to be caught: 300 steps in all, not STEADY's 3000.
    env = worker_process_env(settings, **{**STEADY, "MISTUDIO_MIN_SAE_STEPS": "300"}, MISTUDIO_MAX_JOB_ATTEMPTS="6",
                             MISTUDIO_CHECKPOINT_EVERY_EPOCHS=str(JOB["max_epochs"]),
                             MISTUDIO_PAUSE_AT_PHASE=",".join(PAUSES))
    process = start_cluster(["qcluster"], env, tmp_path / "q.log")
    try:
        assert upload(SAMPLE_CORPUS.name, SAMPLE_CORPUS.read_bytes()).status_code == 200
        job_id = submit(alice_api, **JOB)
        at = {entry: kill_worker_paused_at(job_id, entry, settings.DATA_DIR) for entry in PAUSES}
        assert wait_for(alice_api, job_id, finished)["status"] == "completed"
        reference = submit(alice_api, **JOB)
        assert wait_for(alice_api, reference, finished)["status"] == "completed"
    finally:
        kill_cluster(process)

    # Where each run was when it was killed.
    assert [(at[entry].attempts, at[entry].phase) for entry in PAUSES] == [
        (1, "loading_model"), (2, "extracting_activations"), (3, "training"), (4, "computing_statistics"),
        (5, "analyzing_features")]
    assert not at["extracting_activations"].activations_path  # mid-extraction: the cache not complete
    killed_in_training = at["training@3"]
    assert killed_in_training.activations_path and killed_in_training.current_epoch >= 3
    assert killed_in_training.checkpoints_then == 0
    job = TrainingJob.objects.get(pk=job_id)
    expected = TrainingJob.objects.get(pk=reference)
    assert job.attempts == 6
    # Rerun from the cache with no checkpoint, then resumed from the final checkpoint twice: the same SAE.
    assert job.training_stats["final_loss"] == pytest.approx(expected.training_stats["final_loss"], rel=1e-6)
    assert job.evaluation["explained_variance"] == pytest.approx(expected.evaluation["explained_variance"], rel=1e-6)

    stats = job.training_stats
    assert [run["ended"] for run in stats["runs"]] == ["worker lost"] * 5 + ["completed"]
    assert stats["training_time_seconds"] == pytest.approx(
        sum(run["training_seconds"] or 0 for run in stats["runs"]), abs=5e-3)
    # Run 3 trained for at least two epochs before it was killed, run 4 retrained from the cache.
    assert stats["runs"][2]["training_seconds"] > 0 and stats["runs"][3]["training_seconds"] > 0
    # The killed run's training counts: the total is more than the rerun's, which trained every epoch
    # (compared within the job: against the reference job's seconds it depended on the machine's
    # load, and failed under it).
    assert stats["training_time_seconds"] >= stats["runs"][3]["training_seconds"] + stats["runs"][2]["training_seconds"] - 5e-3
    # Run 3 extracted the cache; the runs after it reused it, and the result reports its extraction.
    assert stats["runs"][2]["extraction_seconds"] > 0
    assert [run["extraction_seconds"] for run in stats["runs"][3:]] == [None, None, None]
    assert stats["extraction"]["tokens"] == expected.training_stats["extraction"]["tokens"]
    assert stats["extraction"]["seconds"] == pytest.approx(stats["runs"][2]["extraction_seconds"], abs=1e-3)


@pytest.mark.slow
def test_a_cluster_killed_twice_strands_none_of_the_jobs_whose_tasks_it_had_taken(
        alice_api, upload, settings, hub_models, tmp_path):
    # Short sweeps so a lost task is found within seconds (the defaults: a minute or so).
    env = worker_process_env(settings, **STEADY, MISTUDIO_QUEUE_STALE_S="2", MISTUDIO_WATCHDOG_INTERVAL_S="0.5",
                             MISTUDIO_WORKER_SEEN_INTERVAL_S="0.5")
    from django_q.brokers import get_broker

    from gpus.models import Worker

    assert upload(SAMPLE_CORPUS.name, SAMPLE_CORPUS.read_bytes()).status_code == 200
    cluster = start_cluster(["qcluster"], env, tmp_path / "q1.log")
    first = submit(alice_api, **{**JOB, "max_epochs": 100000})
    behind = [submit(alice_api, **JOB), submit(alice_api, **JOB)]
    wait_for(alice_api, first, lambda s: s["status"] == "running" and s["current_epoch"] >= 1)
    # The cluster has taken both other tasks from the broker: one buffered, one in its pusher's hand.
    deadline = time.monotonic() + 30
    while get_broker("mistudio").queue_size() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not get_broker("mistudio").queue_size()
    kill_cluster(cluster)
    # The owner cancels while the host is down: the job ends cancelled, and must not keep the slot.
    assert alice_api.post(f"/api/v1/train/{first}/cancel").json()["message"].startswith("Cancellation requested")

    cluster = start_cluster(["qcluster"], env, tmp_path / "q2.log")
    try:
        assert wait_for(alice_api, first, finished, timeout_s=30)["status"] == "cancelled"
        # The lost tasks are found; the second restart in a row comes while one of them trains.
        wait_for(alice_api, behind[0], lambda s: s["status"] == "running" and s["current_epoch"] >= 2, timeout_s=60)
        kill_cluster(cluster)
        cluster = start_cluster(["qcluster"], env, tmp_path / "q3.log")
        for job_id in behind:
            assert wait_for(alice_api, job_id, finished, timeout_s=120)["status"] == "completed"
    finally:
        kill_cluster(cluster)
    assert TrainingJob.objects.get(pk=behind[0]).attempts == 2
    assert TrainingJob.objects.get(pk=behind[1]).attempts == 1
    assert not Worker.objects.filter(job__isnull=False).exists()  # no slot stays leased
