"""A gpu_ids job in the deployment docs/deploy.md describes: one `manage.py gpu_worker` per GPU (fake
GPUs: real worker processes that train on the CPU, the ranks as gloo processes). The job runs, on
its first GPU's worker, under torchrun; while it trains it holds both GPUs, and a job for its
second GPU waits for it instead of sharing the GPU."""
import time
from datetime import datetime

import pytest

from gpus.models import Worker
from tests.model_fixtures import SAMPLE_CORPUS
from tests.system.e2e.test_worker_process import start_cluster, stop_cluster, submit, wait_for, worker_process_env
from tests.training.worker.test_ddp import descendants
from training.models import TrainingJob

pytestmark = pytest.mark.django_db(transaction=True)

ENDED = ("completed", "failed", "cancelled")


@pytest.fixture
def gpu_workers(settings, hub_models, tmp_path):
    env = worker_process_env(settings, MISTUDIO_WORKER_SEEN_INTERVAL_S="0.5", MISTUDIO_WATCHDOG_INTERVAL_S="1",
                             MISTUDIO_QUEUE_STALE_S="3")
    processes = [start_cluster(["gpu_worker", "--gpu", str(gpu), "--fake", "--host-name", "host-a"], env,
                               tmp_path / f"gpu{gpu}.log") for gpu in (0, 1)]
    yield processes
    for process in processes:
        stop_cluster(process)


def wait_until(condition, what, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.slow
def test_a_gpu_ids_job_runs_on_gpu_workers_and_holds_every_gpu_it_trains_on(alice_api, upload, gpu_workers):
    # Before: the job went to the default queue, which no `gpu_worker` serves, and stayed queued.
    wait_until(lambda: Worker.objects.filter(host="host-a", device__in=["gpu0", "gpu1"]).count() == 2,
               "the two GPU workers never registered")
    assert upload(SAMPLE_CORPUS.name, SAMPLE_CORPUS.read_bytes()).status_code == 200
    ddp = submit(alice_api, gpu_ids=[0, 1], max_epochs=2, min_loss=0, max_sequence_length=15, sae_batch_tokens=512)
    leases = lambda: dict(Worker.objects.filter(host="host-a").values_list("device", "job_id"))  # noqa: E731
    wait_until(lambda: leases() == {"gpu0": ddp, "gpu1": ddp} or TrainingJob.objects.get(pk=ddp).status in ENDED,
               "the gpu_ids job never leased both GPUs")
    assert leases() == {"gpu0": ddp, "gpu1": ddp}, TrainingJob.objects.get(pk=ddp).message
    assert TrainingJob.objects.get(pk=ddp).worker_pid in descendants(gpu_workers[0].pid)  # GPU 0's worker runs it

    single = submit(alice_api, gpu_id=1, max_epochs=1, min_loss=0)
    # GPU 1's worker takes it, finds GPU 1 leased, and hands it back while the DDP job trains.
    wait_until(lambda: "was busy" in TrainingJob.objects.get(pk=single).message
               or TrainingJob.objects.get(pk=ddp).status in ENDED, "the job for GPU 1 was never handed back")

    for job_id in (ddp, single):
        done = wait_for(alice_api, job_id, lambda s: s["status"] in ENDED, timeout_s=300)
        assert done["status"] == "completed", done
    ran_ddp, ran_single = TrainingJob.objects.get(pk=ddp), TrainingJob.objects.get(pk=single)
    assert ran_ddp.worker_host == "host-a" and ran_ddp.gpu_ids == [0, 1] and ran_ddp.attempts == 1
    assert ran_ddp.training_stats["total_epochs"] == 2
    # The run that trained the single job started once the DDP job had ended (a hand-back keeps no run).
    assert datetime.fromisoformat(ran_single.runs[-1]["started_at"]) >= ran_ddp.completed_at
    assert ran_single.attempts == 1
    wait_until(lambda: not Worker.objects.filter(job__isnull=False).exists(), "a lease was never released", 15)
