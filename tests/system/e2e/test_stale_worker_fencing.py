"""A stale worker is fenced: two real `qcluster`s as two hosts; the one training a job is paused
whole (SIGSTOP to its process group) past MISTUDIO_HEARTBEAT_STALE_S, the other host recovers the
job and resumes it, and the paused one is let go (SIGCONT). Paused in training or in finishing
(evaluating, before its artifacts are in place), the stale run writes nothing once it runs again:
the job's progress never goes back, the ending and the artifacts are the new owner's, and the
stale run's staged files go."""
import os
import signal
import time
from pathlib import Path

import pytest

from tests.model_fixtures import SAMPLE_CORPUS
from tests.system.e2e.test_crash_recovery import JOB, STEADY
from tests.system.e2e.test_worker_process import start_cluster, stop_cluster, submit, worker_process_env
from training import services
from training.models import TrainingJob

pytestmark = pytest.mark.django_db(transaction=True)

STOPPED_NOTICE = b"was taken over by another run (attempt 1 is stale)"
# How the stale run learned it: a write of its own that matched no row, not its heartbeat.
FENCED_WRITE = b"a write of attempt 1 matched no row"


@pytest.fixture
def hosts(settings, hub_models, tmp_path):
    """start(host) runs a `qcluster` as that host; {host: its cluster}. host-a, which trains the job
    first, writes its heartbeat once a minute: when it wakes from its pause, its next write meets
    the new owner before its heartbeat does, as issue 26 saw. host-b finds a heartbeat stale after
    3 s and runs the recovery checks every half second, so it takes a paused job over in seconds."""
    env = worker_process_env(settings, **STEADY, MISTUDIO_CHECKPOINT_EVERY_EPOCHS="1",
                             MISTUDIO_WATCHDOG_INTERVAL_S="0.5", MISTUDIO_WORKER_SEEN_INTERVAL_S="0.5",
                             MISTUDIO_QUEUE_STALE_S="2")
    per_host = {"host-a": {"MISTUDIO_HEARTBEAT_INTERVAL_S": "60"},
                "host-b": {"MISTUDIO_HEARTBEAT_INTERVAL_S": "0.3", "MISTUDIO_HEARTBEAT_STALE_S": "3"}}
    clusters = {}

    def start(host):
        clusters[host] = start_cluster(["qcluster"], {**env, "MISTUDIO_HOST_NAME": host, **per_host[host]},
                                       tmp_path / f"{host}.log")
        return clusters[host]

    start.clusters = clusters
    yield start
    for process in clusters.values():
        os.killpg(process.pid, signal.SIGCONT)  # a stopped cluster would never see the SIGTERM
        stop_cluster(process)


def job_row(job_id):
    return TrainingJob.objects.filter(pk=job_id).values().get()


def pause_when(job_id, cluster, predicate, timeout_s=120):
    """SIGSTOP the whole cluster (its process group) the moment the job's row satisfies `predicate`
    (polled every few ms); that row."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = job_row(job_id)
        if row["status"] == "running" and predicate(row):
            os.killpg(cluster.pid, signal.SIGSTOP)
            return job_row(job_id)
        assert row["status"] in ("queued", "running"), f"{job_id} ended ({row['status']}: {row['message']}) first"
        time.sleep(0.005)
    raise AssertionError(f"{job_id} never got there; last: {row['status']}/{row['phase']}")


def watch(job_id, until, timeout_s=120):
    """The job's progress readings, every few ms, until its row satisfies `until`; the last row."""
    seen, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = job_row(job_id)
        seen.append(row["progress"])
        if until(row):
            return seen, row
        time.sleep(0.01)
    raise AssertionError(f"{job_id} never got there; last: {row['status']}/{row['phase']} {row['message']}")


def wait_for_notice(log_path: Path, timeout_s=60):
    """Once the stale run said it stopped: that it learned so from a write that did not land."""
    deadline = time.monotonic() + timeout_s
    while STOPPED_NOTICE not in log_path.read_bytes():
        assert time.monotonic() < deadline, f"the stale run never said it stopped:\n{log_path.read_text()[-3000:]}"
        time.sleep(0.1)
    assert FENCED_WRITE in log_path.read_bytes()


def artifacts(row) -> dict:
    """Each artifact file of the ending with its bytes and when it was last replaced."""
    files = [Path(row["model_path"]), Path(row["metadata_path"]), *sorted(Path(row["features_dir"]).rglob("*")),
             *sorted(Path(row["exports"]["saelens"]).rglob("*"))]
    return {str(path): (path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_ino)
            for path in files if path.is_file()}


def stale_leftovers(job_id, data_dir) -> list[str]:
    return sorted(path.name for path in (data_dir / "models").glob(f"{job_id}_attempt-1*")
                  if path.suffix == ".part" or not path.name.endswith(".pt"))


@pytest.mark.slow
def test_a_worker_paused_in_training_writes_nothing_once_it_runs_again(alice_api, upload, hosts, tmp_path, data_dir):
    assert upload(SAMPLE_CORPUS.name, SAMPLE_CORPUS.read_bytes()).status_code == 200
    stale_host = "host-a"
    job_id = submit(alice_api, **JOB)
    paused = pause_when(job_id, hosts(stale_host), lambda row: row["phase"] == "training" and row["current_epoch"] >= 3
                        and TrainingJob.objects.get(pk=job_id).checkpoints.exists())
    assert paused["worker_host"] == stale_host
    hosts("host-b")
    # The other host takes it over and resumes it past where the paused run stopped.
    _, row = watch(job_id, lambda row: row["attempts"] == 2 and row["status"] == "running"
                   and row["progress"] > paused["progress"] + 0.1)
    assert row["worker_host"] == "host-b"

    os.killpg(hosts.clusters[stale_host].pid, signal.SIGCONT)
    seen, done = watch(job_id, lambda row: row["status"] != "running")
    assert done["status"] == "completed", done["message"]
    wait_for_notice(tmp_path / f"{stale_host}.log")

    assert seen == sorted(seen), "the job's progress went back"
    final = job_row(job_id)
    assert final["worker_host"] != stale_host and final["attempts"] == 2 and final["progress"] == 1.0
    assert [(run["attempt"], run["host"], run["ended"]) for run in final["runs"]] == [
        (1, stale_host, "worker lost"), (2, final["worker_host"], "completed")]
    assert Path(final["model_path"]).is_file()
    # The stale run's last checkpoint, if it wrote one after it ran again, was neither recorded nor kept.
    recorded = set(TrainingJob.objects.get(pk=job_id).checkpoints.values_list("path", flat=True))
    attempt_1 = {str(p) for p in (data_dir / "models").glob(f"{job_id}_attempt-1_checkpoint_*.pt")}
    assert attempt_1 <= recorded
    assert stale_leftovers(job_id, data_dir) == []


@pytest.mark.slow
def test_a_worker_paused_while_finishing_writes_neither_the_ending_nor_the_artifacts(
        alice_api, upload, hosts, tmp_path, data_dir):
    assert upload(SAMPLE_CORPUS.name, SAMPLE_CORPUS.read_bytes()).status_code == 200
    stale_host = "host-a"
    job_id = submit(alice_api, **{**JOB, "max_epochs": 4})
    # Trained, evaluating: its SAE, SAELens folder and analysis are still to be written.
    paused = pause_when(job_id, hosts(stale_host), lambda row: row["phase"] == "computing_statistics")
    assert paused["worker_host"] == stale_host
    hosts("host-b")
    _, done = watch(job_id, lambda row: row["status"] not in ("queued", "running"))
    assert done["status"] == "completed", done["message"]
    assert done["worker_host"] != stale_host and done["attempts"] == 2
    owners = artifacts(done)
    assert owners

    os.killpg(hosts.clusters[stale_host].pid, signal.SIGCONT)
    wait_for_notice(tmp_path / f"{stale_host}.log")

    assert job_row(job_id) == done  # not a field written, not even its updated_at
    assert artifacts(done) == owners  # nor a file replaced
    assert not services.job_staging_dir(TrainingJob(pk=job_id, attempts=1)).exists()
    assert stale_leftovers(job_id, data_dir) == []
