"""One job over several processes: DDP training in the engine (two gloo processes on the CPU), and
a `gpu_ids` job that the worker runs under torchrun, completes and cancels.

Spawned ranks import this module, so everything that needs Django is imported inside the tests
that use it.
"""
import os
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.distributed import exit_rank, load_result, save_result
from engine.trainer import TrainConfig, train_sae
from tests.training.commands.test_train_command import last_json, run_train  # noqa: F401 (fixture)

WORLD = 2


def data():
    # 950 training rows: seven batches of 128 and one of 54, all even, so two ranks split every
    # batch exactly as one process trains it.
    return np.random.default_rng(1).normal(size=(1000, 16)).astype(np.float32)


def config(**overrides) -> TrainConfig:
    values = dict(min_steps=0, cpu_bf16="off", hidden_dim=64, learning_rate=1e-3, sae_batch_tokens=128, max_epochs=4, min_loss=0.0,
                  architecture="topk", k=4, decode_path="dense", checkpoint_every_epochs=2,
                  checkpoint_interval_s=1e9, progress_interval_s=0.0, stop_check_interval_s=0.0)
    values.update(overrides)
    return TrainConfig(**values)


# A strong penalty at a high rate kills features within the first half of training: they are resampled.
# (sparsity_coeff 0.08 at d_in 16 is a per-element weight of 2.0; engine.sae.registry.Architecture.sparsity_weight.)
RELU_RESAMPLING = dict(architecture="relu", k=None, sparsity_coeff=0.08, learning_rate=3e-2, sae_batch_tokens=64,
                       dead_window_tokens=128)

GATED = dict(architecture="gated", k=None)


def _rank(rank, rendezvous, out_dir, runs):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        for name, (overrides, resume_from) in runs.items():
            result = train_sae(data(), config(**overrides), distributed=True, resume_from=resume_from,
                               checkpoint_dir=Path(out_dir) / name)
            save_result(result, Path(out_dir) / f"{name}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    exit_rank()  # CI saw a finished gloo rank abort in the interpreter's teardown (SIGABRT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Single-process references, then the same runs over two processes (one spawn for all)."""
    out = tmp_path_factory.mktemp("ddp")
    single = {"topk": train_sae(data(), config()), "gated": train_sae(data(), config(**GATED)),
              "checkpointed": train_sae(data(), config(), checkpoint_dir=out / "single")}
    at_epoch_2 = next(c.path for c in single["checkpointed"].checkpoints if c.epoch == 2)
    # Each spawned run: its config, and the checkpoint it resumes from (if any).
    plan = {"topk": ({}, None), "relu": (RELU_RESAMPLING, None), "resumed": ({}, str(at_epoch_2)),
            "auto": ({"decode_path": "auto", "max_epochs": 1}, None), "gated": (GATED, None)}
    mp.spawn(_rank, args=(str(out / "rendezvous"), str(out), plan), nprocs=WORLD, join=True)
    ranks = {name: [load_result(out / f"{name}_rank{r}.pt") for r in range(WORLD)] for name in plan}
    return single, ranks, out


def assert_same_weights(result, reference, **tolerance):
    for name, value in reference.sae.state_dict().items():
        torch.testing.assert_close(result.sae.state_dict()[name], value, **tolerance)


@pytest.mark.slow
def test_two_processes_train_the_topk_sae_one_process_trains(runs):
    single, ranks, _ = runs
    reference, (rank0, rank1) = single["topk"], ranks["topk"]
    assert rank0.total_epochs == 4 and rank0.sae_batch_tokens == 128
    np.testing.assert_allclose(rank0.loss_history, reference.loss_history, rtol=1e-4)
    assert_same_weights(rank0, reference, rtol=1e-4, atol=1e-5)
    assert rank0.scaling_factor == pytest.approx(reference.scaling_factor, rel=1e-12)
    assert rank0.final_mse == pytest.approx(reference.final_mse, rel=1e-4)
    # The ranks end identical, dead-feature counters included.
    assert_same_weights(rank1, rank0, rtol=0, atol=0)
    np.testing.assert_array_equal(rank1.tokens_since_fired, rank0.tokens_since_fired)


@pytest.mark.slow
def test_two_processes_train_the_gated_sae_one_process_trains(runs):
    # Its gate's L1 and auxiliary reconstruction are per-token losses outside the DDP forward.
    single, ranks, _ = runs
    reference, (rank0, rank1) = single["gated"], ranks["gated"]
    assert rank0.architecture == "gated"
    np.testing.assert_allclose(rank0.loss_history, reference.loss_history, rtol=1e-4)
    assert_same_weights(rank0, reference, rtol=1e-4, atol=1e-5)
    assert_same_weights(rank1, rank0, rtol=0, atol=0)


def test_relu_resampling_leaves_every_rank_with_the_same_weights(runs):
    _, ranks, _ = runs
    rank0, rank1 = ranks["relu"]
    assert rank0.resampled_features > 0
    assert rank1.resampled_features == rank0.resampled_features
    assert_same_weights(rank1, rank0, rtol=0, atol=0)
    assert rank1.loss_history == rank0.loss_history


def test_two_processes_resume_a_checkpoint_and_end_where_one_process_does(runs):
    single, ranks, out = runs
    rank0, _ = ranks["resumed"]
    assert rank0.total_epochs == 4
    np.testing.assert_allclose(rank0.loss_history, single["topk"].loss_history, rtol=1e-4)
    assert_same_weights(rank0, single["topk"], rtol=1e-4, atol=1e-5)
    # Only rank 0 writes checkpoints (one file per epoch, not one per rank).
    assert [c.path.name for c in rank0.checkpoints] == ["sae_checkpoint_4.pt"]
    assert ranks["resumed"][1].checkpoints == []
    saved = torch.load(out / "resumed" / "sae_checkpoint_4.pt", weights_only=True)
    assert set(saved["sae"]) == {"W_enc", "b_enc", "W_dec", "b_dec"}


def test_the_ranks_agree_on_a_timed_decode_path(runs):
    # "auto" times dense against sparse decoding on each rank: rank 0's choice must hold everywhere.
    _, ranks, _ = runs
    rank0, rank1 = ranks["auto"]
    assert rank0.decode_path == rank1.decode_path
    assert_same_weights(rank1, rank0, rtol=0, atol=0)


# A job over gpu_ids=[0, 1] on this CPU machine: the worker (job_run, in this process) runs real
# torchrun with two gloo processes.

# Sequences of at most 15 tokens (the BOS put in front counts in them and is no row: 14 text
# tokens) give 5442 training rows: even, so two ranks split every batch (the last one of an epoch
# too) exactly as one process trains it.
JOB = dict(model_name="tiny/gpt2", layer_number=1, hidden_dim=64, max_sequence_length=15, learning_rate=1e-3,
           architecture="topk", k=8, min_loss=0, sae_batch_tokens=512)


@pytest.fixture
def ddp_on_cpu(settings, hub_models):
    settings.DDP_ON_CPU = True
    settings.TOPK_DECODE = "dense"  # both jobs decode alike, so they can be compared closely
    settings.MIN_SAE_STEPS = 0  # batches of sae_batch_tokens, as asked
    return settings


def make_job(owner, **fields):
    from corpora.models import Corpus
    from corpora.services import corpus_add_from_path
    from tests.model_fixtures import SAMPLE_CORPUS
    from training import services

    if not Corpus.objects.filter(owner=owner, name=SAMPLE_CORPUS.name).exists():
        corpus_add_from_path(owner=owner, path=SAMPLE_CORPUS)
    request = services.JobRequest(corpus_file=SAMPLE_CORPUS.name, **{**JOB, **fields})
    return services.job_create(owner=owner, request=request, enqueue=False)


def activations_job(owner, folder, **fields):
    """A job on an activations file: no model to load and nothing to extract."""
    from training import services

    path = folder / "acts.npy"
    np.save(path, np.random.default_rng(0).normal(size=(4000, 16)).astype(np.float32))
    request = services.JobRequest(activations_file=str(path), hidden_dim=32, min_loss=0, **fields)
    return services.job_create(owner=owner, request=request, enqueue=False)


def descendants(pid):
    """The live processes below `pid` (a zombie has exited: it only waits to be reaped)."""
    found = set()
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if child.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                found.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_gpu_ids_job_trains_under_torchrun_and_ends_as_a_one_process_job_does(alice, ddp_on_cpu, settings):
    from training.documents import result_document
    from training.models import TrainingJob
    from training.worker.job import job_run

    settings.PROGRESS_INTERVAL_S = 0.0  # a point on the curve every step: this short job may last under 0.1 s

    single = job_run(make_job(alice, max_epochs=2).id)
    job = job_run(make_job(alice, max_epochs=2, gpu_ids=[0, 1]).id)
    assert single.status == job.status == TrainingJob.Status.COMPLETED, job.message
    assert job.gpu_ids == [0, 1] and job.device == "cpu"
    stats, reference = job.training_stats, single.training_stats
    assert stats["total_epochs"] == 2 and stats["sae_batch_tokens_used"] == reference["sae_batch_tokens_used"]
    np.testing.assert_allclose(stats["loss_history"], reference["loss_history"], rtol=1e-4)
    weights, expected = torch.load(job.model_path, weights_only=True), torch.load(single.model_path, weights_only=True)
    for name, value in expected.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-5)
    # Rank 0 wrote the progress, the curve and the checkpoint rows; the worker evaluated and analysed.
    assert job.progress == 1.0 and [p["step"] for p in job.training_curve] == list(range(1, 23))
    assert [c.epoch for c in job.checkpoints.all()] == [c.epoch for c in single.checkpoints.all()]
    assert job.evaluation["eval_tokens"] == single.evaluation["eval_tokens"] and job.features_dir
    assert not list(Path(job.model_path).parent.glob(f"{job.id}_ddp*"))  # the hand-off files are gone
    assert result_document(job)["gpu_ids"] == [0, 1] and result_document(single)["gpu_ids"] is None


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_cancelling_a_gpu_ids_job_stops_every_process_and_keeps_a_checkpoint(alice, ddp_on_cpu, tmp_path):
    import threading

    from django.db import connection

    from training import services
    from training.models import TrainingJob
    from training.worker.job import job_run

    job_id = activations_job(alice, tmp_path, max_epochs=100_000, sae_batch_tokens=64, gpu_ids=[0, 1]).id
    seen = {"processes": set()}

    def cancel_once_an_epoch_is_done():
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if TrainingJob.objects.filter(pk=job_id, phase=TrainingJob.Phase.TRAINING, current_epoch__gte=2).exists():
                    seen["processes"] = descendants(os.getpid())
                    break
                time.sleep(0.1)
        finally:
            services.job_cancel(TrainingJob.objects.get(pk=job_id))  # on time or not: the test must end
            connection.close()

    canceller = threading.Thread(target=cancel_once_an_epoch_is_done)
    canceller.start()
    job = job_run(job_id)
    canceller.join()
    assert job.status == TrainingJob.Status.CANCELLED, job.message
    assert job.message.startswith("Cancelled at epoch")  # rank 0 handed back its result
    # torchrun and its two ranks ran, and none of them is left.
    assert len(seen["processes"]) >= 3
    assert not seen["processes"] & descendants(os.getpid())
    # The ranks stopped after the same step, and rank 0 checkpointed it.
    checkpoint = job.last_checkpoint
    assert checkpoint is not None and Path(checkpoint.path).is_file()
    saved = torch.load(checkpoint.path, weights_only=True)
    assert saved["step"] == checkpoint.step > 0 and saved["epoch"] >= 1


# A rank under a cancel's SIGTERMs (the worker's and torchrun's, arriving together): it must go on
# to its next step and see the stop. The rank's handler, then busy steps, then the flag it read.
_RANK_UNDER_SIGTERMS = """
import sys, time
from training.worker.ddp import stop_on_sigterm
stopping = stop_on_sigterm()
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    sum(range(200))
print("stopped" if stopping() else "not asked", flush=True)
"""


@pytest.mark.slow
def test_a_rank_flooded_with_sigterms_keeps_stepping_and_sees_the_stop():
    """A handler that took a lock (threading.Event.set) deadlocked when a second SIGTERM came
    while the first was being handled: the rank hung until torchrun killed it, and the cancel lost
    its result. Flooded for 1.5 s, that handler hung the process or ended it (nested handlers) in
    every try here."""
    import signal
    import subprocess
    import sys

    rank = subprocess.Popen([sys.executable, "-c", _RANK_UNDER_SIGTERMS, "2.5"], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[3])
    try:
        assert rank.stdout.readline().strip() == "ready"
        sent, deadline = 0, time.monotonic() + 1.5
        while time.monotonic() < deadline and rank.poll() is None:
            rank.send_signal(signal.SIGTERM)
            sent += 1
        out, _ = rank.communicate(timeout=30)
    finally:
        rank.kill()
    assert sent > 1000 and rank.returncode == 0 and out.strip() == "stopped", (sent, rank.returncode, out)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_failing_rank_fails_the_job_with_its_reason(alice, ddp_on_cpu, tmp_path):
    from training.models import TrainingJob
    from training.worker.job import job_run

    # Past the API's range: the loss overflows within a few steps, on both ranks alike.
    job = job_run(activations_job(alice, tmp_path, max_epochs=2, sae_batch_tokens=256, learning_rate=1e12, gpu_ids=[0, 1]).id)
    assert job.status == TrainingJob.Status.FAILED
    assert "torchrun (2 processes) exited with status 1" in job.message
    assert "TrainingDiverged: The loss became" in job.message and "lower learning_rate" in job.message


@pytest.mark.django_db
@pytest.mark.parametrize(
    "fields,needle",
    [
        ({"gpu_ids": [0, 1], "gpu_id": 0}, "gpu_ids: give gpu_id (one GPU) or gpu_ids (several GPUs), not both."),
        ({"gpu_ids": [1, 1]}, "gpu_ids: [1, 1] names a GPU more than once."),
        ({"gpu_ids": [0]}, "gpu_ids:"),
        ({"gpu_ids": [0, -1]}, "gpu_ids.1: Ensure this value is greater than or equal to 0."),
    ],
)
@pytest.mark.slow
def test_gpu_ids_requests_are_checked(alice_api, upload, hub_models, settings, fields, needle):
    from tests.model_fixtures import SAMPLE_CORPUS
    from training.models import TrainingJob

    settings.DDP_ON_CPU = True
    assert upload(SAMPLE_CORPUS.name, SAMPLE_CORPUS.read_bytes()).status_code == 200
    response = alice_api.post("/api/v1/train", {**JOB, "corpus_file": SAMPLE_CORPUS.name, **fields}, format="json")
    assert response.status_code == 400
    assert response.json()["detail"].startswith(needle)
    assert not TrainingJob.objects.exists()


@pytest.mark.django_db
def test_gpu_ids_on_a_machine_without_a_gpu_need_ddp_on_cpu(alice_api, upload, hub_models, settings):
    from tests.model_fixtures import SAMPLE_CORPUS

    assert upload(SAMPLE_CORPUS.name, SAMPLE_CORPUS.read_bytes()).status_code == 200
    body = {**JOB, "corpus_file": SAMPLE_CORPUS.name, "gpu_ids": [0, 1]}
    refused = alice_api.post("/api/v1/train", body, format="json")
    assert refused.status_code == 400
    assert "no NVIDIA GPU" in refused.json()["detail"]
    settings.DDP_ON_CPU = True
    accepted = alice_api.post("/api/v1/train", body, format="json")
    assert accepted.status_code == 200, accepted.json()


@pytest.mark.django_db
def test_a_gpu_ids_job_plans_the_disk_as_a_one_device_job_does(alice, ddp_on_cpu):
    # One pass: streamed, by one process or by the ranks alike.
    single = make_job(alice, max_epochs=1)
    job = make_job(alice, max_epochs=1, gpu_ids=[0, 1])
    assert single.disk_plan["cache"] is job.disk_plan["cache"] is False
    assert job.disk_plan["reason"] == single.disk_plan["reason"]
    assert make_job(alice, max_epochs=2, gpu_ids=[0, 1], cache_activations="always").disk_plan["cache"] is True


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_streamed_gpu_ids_job_trains_under_torchrun_each_rank_running_the_model(alice, ddp_on_cpu, settings, caplog):
    """No cache: each rank loads the model, computes every row and steps on its share of each
    batch; the worker then evaluates and analyses as a one-process streamed job does."""
    from training.models import TrainingJob
    from training.worker.job import job_run

    single = job_run(make_job(alice, max_epochs=2, cache_activations="never").id)
    job = job_run(make_job(alice, max_epochs=2, cache_activations="never", gpu_ids=[0, 1]).id)
    assert single.status == job.status == TrainingJob.Status.COMPLETED, job.message
    assert f"Job {job.id}: training on 2 CPU processes (DDP) under torchrun" in caplog.text
    assert job.activations_path in (None, "") and not job.disk_plan["cache"]
    stats, reference = job.training_stats, single.training_stats
    assert stats["total_epochs"] == 2 and stats["sae_batch_tokens_used"] == reference["sae_batch_tokens_used"]
    # The same batches, less the odd row of an epoch's last batch that two ranks cannot split.
    assert 0 <= reference["tokens_trained"] - stats["tokens_trained"] <= 2
    np.testing.assert_allclose(stats["loss_history"], reference["loss_history"], rtol=2e-2)
    assert abs(job.evaluation["explained_variance"] - single.evaluation["explained_variance"]) < 0.02
    assert job.evaluation["eval_tokens"] == single.evaluation["eval_tokens"] and job.features_dir
    assert [c.epoch for c in job.checkpoints.all()] == [c.epoch for c in single.checkpoints.all()]
    left = [p.name for p in Path(job.model_path).parent.glob(f"{job.id}_*") if "ddp" in p.name or "stream_rows" in p.name]
    assert not left  # the hand-off files are gone


@pytest.mark.slow
def test_manage_py_train_takes_gpu_ids(run_train, tmp_path):
    activations = tmp_path / "acts.npy"
    np.save(activations, np.random.default_rng(0).normal(size=(2000, 16)).astype(np.float32))
    done = run_train("--activations", str(activations), "--gpu-ids", "0,1", "--hidden-dim", "32", "--max-epochs", "2",
                     "--min-loss", "0", "--sae-batch-tokens", "256", extra_env={"MISTUDIO_DDP_ON_CPU": "1"})
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["status"] == "completed" and result["gpu_ids"] == [0, 1]
    assert result["training_stats"]["total_epochs"] == 2
    assert "epoch 2/2" in done.stderr  # the progress bar follows rank 0's progress
