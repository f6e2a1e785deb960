"""A `gpu_ids` job's SAE training: one torchrun run of DistributedDataParallel, one process per GPU.

The worker runs the job's engine run (training.worker.job) as for any job, with `train()` plugged in
as its training step: the run extracts, then `train()` starts
`python -m torch.distributed.run --standalone --nproc_per_node=N -m training.worker.ddp <job id>` and waits
for it, watching for cancellation. Each rank runs `main()`: Django (for the database), a process
group (nccl on GPUs, gloo on the CPU), and engine.run.training.train_step(distributed=True). Rank 0
writes progress, the training curve and checkpoint rows with the callbacks of a one-process job
(training.worker.reporting.train_callbacks) and hands its TrainResult back in a file (engine.distributed.save_result);
the worker loads it, and the run evaluates, exports and analyses the SAE as for any job.

The ranks train the step the run handed the worker (engine.run.training.TrainStep: the file, the
TrainConfig, the checkpoint to resume; or a StreamStep, when the job streams: each rank then loads
the model and computes every row itself, and steps on its share of each batch), read from
the attempt's launch file (training.artifacts.layout.ddp_files); the command line
carries the job id and the run's attempt only (rank 0's writes are fenced by it:
training.services.job_owned), and the environment the database URL. On cancel the worker sends SIGTERM to torchrun and to every rank:
the ranks stop after the same step, rank 0 writes a checkpoint, and SIGKILL follows STOP_GRACE_S
later for whatever still runs.
"""
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
import psutil

from engine.errors import DeviceError, EngineError
from mistudio.database import database_url
from mistudio.processes import pid_alive

logger = logging.getLogger("training")

# torchrun gives its ranks 30 s to exit after SIGTERM; the worker waits a little longer before SIGKILL.
STOP_GRACE_S = 40.0
_POLL_S = 0.5
# A rank that fails says why on one line starting with this; the job's message quotes it.
_FAILURE_MARK = "miStudio DDP rank failed: "
_TAIL_CHARS = 2000


class DistributedTrainingFailed(EngineError):
    pass


def worker_device(job, select_device) -> str:
    """Where the worker extracts and evaluates a gpu_ids job: on its first GPU, or on the CPU where
    MISTUDIO_DDP_ON_CPU lets CPU processes stand in for GPUs."""
    import torch

    if torch.cuda.is_available():
        return select_device(job.gpu_ids[0])
    if settings.DDP_ON_CPU:
        return "cpu"
    raise DeviceError(f"gpu_ids {job.gpu_ids} were requested but this worker has no CUDA device")


def check_gpus_on_host(job) -> None:
    """A DeviceError unless this host has every listed GPU: a GPU worker sees only its own through
    CUDA, so it asks NVML (no CUDA context), before torchrun would fail on a missing one."""
    from engine.devices import gpu_inventory

    present = {gpu.index for gpu in gpu_inventory().gpus}
    missing = [index for index in job.gpu_ids if index not in present]
    if missing:
        raise DeviceError(f"gpu_ids {job.gpu_ids}: host {settings.HOST_NAME} has no GPU {missing[0]} (NVML sees "
                          f"{sorted(present) or 'none'}); list GPUs that every host serving GPU {job.gpu_ids[0]} has")


def torchrun_step(job, report):
    """The training step a gpu_ids job's engine run takes (engine.run.run's `train`): torchrun
    ranks train on the finished file, rank 0 writing progress and checkpoints to the row."""

    def step_under_torchrun(step, activations, callbacks):
        return train(job, step, callbacks.should_stop, report)

    return step_under_torchrun


def train(job, step, should_stop, report):
    """The engine run's training step (engine.run.training.TrainStep) under torchrun: rank 0's
    TrainResult; None when the job was cancelled before rank 0 could hand one back."""
    from engine.distributed import load_result
    from engine.run.training import StreamStep
    from training.worker.reporting import training_place

    cuda = str(step.device).startswith("cuda")
    count = len(job.gpu_ids)
    where = training_place(job, step.device)
    files = _files(job)
    files["result"].unlink(missing_ok=True)
    files["log"].unlink(missing_ok=True)
    # The ranks start after extraction, but their first epoch follows the extraction order as a
    # one-process job's does when it trains while extracting (the step's arrival_order), so both
    # give the same SAE. A streamed job's ranks each run the model over the corpus (a StreamStep).
    kind = "stream" if isinstance(step, StreamStep) else "step"
    files["launch"].write_text(json.dumps({kind: step.to_dict(), "cuda": cuda, "result_path": str(files["result"])}))
    if cuda:
        import torch

        # Rank 0 shares the worker's GPU: hand back what extraction cached.
        torch.cuda.empty_cache()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={count}",
               "-m", "training.worker.ddp", job.id, str(job.attempts)]
    logger.info("Job %s: training on %s under torchrun", job.id, where)
    # Appending (O_APPEND): lines that ranks write at the same moment never overwrite each other.
    with open(files["log"], "ab") as log:
        # A session of its own: torchrun's group can be signalled without touching the worker.
        process = subprocess.Popen(command, cwd=settings.BASE_DIR, env=_environment(job, cuda), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        cancelled = _wait(job, process, should_stop, report)
    except BaseException:
        # The job was taken from this worker (JobLost) or the worker failed: nothing more from the ranks.
        _stop(process, grace_s=0)
        raise
    finally:
        files["launch"].unlink(missing_ok=True)
    if not cancelled and process.returncode != 0:
        raise DistributedTrainingFailed(
            f"torchrun ({count} processes) exited with status {process.returncode}: {_failure(files['log'])} "
            f"(its output: {files['log']})"
        )
    result = load_result(files["result"]) if files["result"].is_file() else None
    if result is None and not cancelled:
        raise DistributedTrainingFailed(f"torchrun exited cleanly but rank 0 left no result: {_failure(files['log'])}")
    files["result"].unlink(missing_ok=True)
    files["log"].unlink(missing_ok=True)
    return result


def _files(job) -> dict[str, Path]:
    from training.artifacts import layout

    # The attempt's own names, as its checkpoints': a stale run's ranks never read or replace the
    # files of the run that took the job over.
    return layout.ddp_files(job.id, job.attempts)


def _environment(job, cuda: bool) -> dict[str, str]:
    """The worker's own environment (the ranks need what it was started with), pointed at the
    database and data folder this worker actually uses (a test's, say), and at the job's GPUs."""
    from django.db import connection

    env = {
        "DJANGO_SETTINGS_MODULE": "mistudio.settings",
        **os.environ,
        "DATABASE_URL": database_url(connection.settings_dict),
        "MISTUDIO_DATA_DIR": str(settings.DATA_DIR),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(settings.BASE_DIR), os.environ.get("PYTHONPATH")])),
    }
    if cuda:
        # Rank r trains on cuda:r, the r-th listed GPU. NVML (and so gpu_ids) numbers GPUs by PCI
        # bus; CUDA's default order may differ.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, job.gpu_ids))
    return env


def _wait(job, process, should_stop, report) -> bool:
    """Wait for torchrun to exit; True when the job was cancelled meanwhile (the ranks then stopped)."""
    from training.models import TrainingJob

    while True:
        try:
            process.wait(timeout=_POLL_S)
            exited = True
        except subprocess.TimeoutExpired:
            exited = False
        if not exited and should_stop():
            _stop(process, grace_s=STOP_GRACE_S)
            return True
        # Rank 0 writes progress to the job row; a terminal's progress bar follows it from there,
        # up to rank 0's last report (read once more after torchrun exits: a short run may end
        # between two polls).
        row = TrainingJob.objects.filter(pk=job.pk).values("progress", "current_epoch", "current_loss", "message").first()
        if row and row["current_loss"] is not None:
            report({"phase": "training", "progress": row["progress"], "epoch": max(1, row["current_epoch"]),
                    "loss": row["current_loss"], "total_epochs": job.max_epochs, "message": row["message"]})
        if exited:
            return False


def _stop(process, *, grace_s: float) -> None:
    """SIGTERM to torchrun and to every rank (each rank runs in a session of its own, so a signal to
    torchrun's group misses them), then SIGKILL to whatever still runs after grace_s."""
    pids = {process.pid, *_descendants(process.pid)}
    if grace_s > 0:
        _signal(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(pid_alive(pid, zombie_counts=False) for pid in pids):
            process.poll()  # reap torchrun as soon as it exits
            time.sleep(0.1)
    _signal({pid for pid in pids if pid_alive(pid, zombie_counts=False)}, signal.SIGKILL)
    process.wait()


def _signal(pids, signum) -> None:
    for pid in pids:
        try:
            os.killpg(pid, signum)  # torchrun and each rank lead their own process group
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (empty when it has exited)."""
    try:
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _failure(log: Path) -> str:
    text = log.read_text(errors="replace") if log.is_file() else ""
    # Ranks usually fail alike: each reason once.
    reasons = [line[len(_FAILURE_MARK):] for line in text.splitlines() if line.startswith(_FAILURE_MARK)]
    if reasons:
        return "; ".join(dict.fromkeys(reasons))
    return text[-_TAIL_CHARS:].strip() or "it wrote nothing to stderr"


def main(job_id: str, attempt: int) -> None:
    """One rank, started by torchrun (RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous in its env),
    for the run of the job at `attempt`: rank 0's writes are fenced by it as its worker's are
    (training.services.job_owned), whatever the row says by the time the rank starts."""
    import django

    django.setup()

    import torch
    import torch.distributed as dist
    from django.db import connection

    from engine.distributed import save_result
    from engine.run.runner import train_stream_step
    from engine.run.training import StreamStep, TrainStep, train_step
    from training.worker.spec import job_spec
    from training.worker.reporting import train_callbacks
    from training.models import TrainingJob

    stopping = stop_on_sigterm()
    job = TrainingJob.objects.get(pk=job_id)
    job.attempts = attempt
    launch = json.loads(_files(job)["launch"].read_text())
    device = f"cuda:{int(os.environ['LOCAL_RANK'])}" if launch["cuda"] else "cpu"
    if launch["cuda"]:
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=torch.device(device))
    else:
        dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        on_progress, on_checkpoint = train_callbacks(job, lambda event: None) if rank == 0 else (None, None)
        should_stop = _stop_check(stopping, job.worker_pid if rank == 0 else None)
        if "stream" in launch:
            # Each rank runs the job's model over the corpus itself (the spec as its worker built it).
            step = StreamStep.from_dict(launch["stream"]).on_device(device)
            result = train_stream_step(job_spec(job, device), step, distributed=True, on_progress=on_progress,
                                       on_checkpoint=on_checkpoint, should_stop=should_stop)
        else:
            # The RAM budget is the host's, and every rank loads a copy.
            step = TrainStep.from_dict(launch["step"]).on_device(device, ram_share=dist.get_world_size())
            result = train_step(step, distributed=True, on_progress=on_progress, on_checkpoint=on_checkpoint,
                                should_stop=should_stop)
        if rank == 0:
            save_result(result, Path(launch["result_path"]))
    except Exception as err:
        line = f"{_FAILURE_MARK}{type(err).__name__}: {err}".replace("\n", " ")
        sys.stderr.flush()
        os.write(sys.stderr.fileno(), (line + "\n").encode())  # one write: one line, whole
        raise
    finally:
        dist.destroy_process_group()
        connection.close()


def stop_on_sigterm():
    """SIGTERM (a cancel, from the worker and from torchrun, usually both) asks this rank to stop
    after its current step; the returned check says whether it was asked. The handler only sets a
    flag: a threading.Event's set() takes a lock, and a second SIGTERM handled while the first
    handler held it deadlocked the rank until torchrun killed it, and the cancel lost its result."""
    asked = [False]

    def ask(signum, frame):
        asked[0] = True

    signal.signal(signal.SIGTERM, ask)
    return lambda: asked[0]


def _stop_check(stopping, worker_pid):
    def should_stop():
        if worker_pid is not None and not pid_alive(worker_pid, zombie_counts=False):
            # The worker died: its job will resume elsewhere from the last checkpoint, so write nothing more.
            raise DistributedTrainingFailed(f"the worker (pid {worker_pid}) that started this run is gone")
        return stopping()

    return should_stop


if __name__ == "__main__":
    from engine.distributed import exit_rank

    main(sys.argv[1], int(sys.argv[2]))
    exit_rank()  # the rank's work is saved, its group destroyed and its connection closed
