"""Two hosts with one GPU each (fake GPUs: real `manage.py gpu_worker` processes that train on the
CPU), four jobs: every job completes, and no GPU ever trains two jobs at once."""
import time

import pytest

from gpus.models import Worker
from tests.model_fixtures import SAMPLE_CORPUS
from tests.system.e2e.test_worker_process import start_cluster, stop_cluster, submit, wait_for, worker_process_env
from training.models import TrainingJob

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def two_hosts(settings, hub_models, tmp_path):
    env = worker_process_env(
        settings,
        MISTUDIO_WORKER_SEEN_INTERVAL_S="0.5",
        # A job whose task waits in a busy host's buffer goes to the idle host within seconds.
        MISTUDIO_QUEUE_STALE_S="3",
        MISTUDIO_WATCHDOG_INTERVAL_S="1",
    )
    processes = [start_cluster(["gpu_worker", "--gpu", "0", "--fake", "--host-name", host], env, tmp_path / f"{host}.log")
                 for host in ("host-a", "host-b")]
    yield processes
    for process in processes:
        stop_cluster(process)


@pytest.mark.slow
def test_four_jobs_on_two_hosts_complete_and_no_gpu_runs_two_at_once(alice_api, upload, two_hosts, charlie_api):
    deadline = time.monotonic() + 60
    while Worker.objects.filter(device="gpu0", host__in=["host-a", "host-b"]).count() < 2:
        assert time.monotonic() < deadline, "the two GPU workers never registered"
        time.sleep(0.2)
    health = alice_api.get("/health").json()
    hosts = {(w["host"], w["device"]) for w in health["workers"] if w["alive"]}
    assert {("host-a", "gpu0"), ("host-b", "gpu0")} <= hosts

    assert upload(SAMPLE_CORPUS.name, SAMPLE_CORPUS.read_bytes()).status_code == 200
    jobs = [submit(alice_api, max_epochs=4, min_loss=0, **({"gpu_id": 0} if i == 0 else {})) for i in range(4)]
    for job_id in jobs:
        done = wait_for(alice_api, job_id, lambda s: s["status"] in ("completed", "failed", "cancelled"), timeout_s=300)
        assert done["status"] == "completed", done

    ran = list(TrainingJob.objects.filter(pk__in=jobs).order_by("started_at"))
    assert {job.worker_host for job in ran} == {"host-a", "host-b"}  # both hosts trained
    for host in ("host-a", "host-b"):
        on_gpu = [job for job in ran if job.worker_host == host]
        for earlier, later in zip(on_gpu, on_gpu[1:]):
            assert later.started_at >= earlier.completed_at, f"{host}'s GPU 0 ran {earlier.pk} and {later.pk} at once"
    assert all(job.attempts == 1 for job in ran)
    # Every lease released: a worker marks its job completed, then releases the lease in its
    # `finally`, so the last one may still be on its way out when its status reads completed.
    deadline = time.monotonic() + 15
    while Worker.objects.filter(job__isnull=False).exists():
        assert time.monotonic() < deadline, list(Worker.objects.filter(job__isnull=False).values("host", "device", "job"))
        time.sleep(0.2)

    status = charlie_api.get("/gpu/status").json()
    seen = {w["host"]: w for w in status["workers"]}
    assert seen["host-a"]["queue"] == seen["host-b"]["queue"] == "mistudio-gpu0"
    assert seen["host-a"]["fake"] is True and seen["host-a"]["last_seen_at"]
