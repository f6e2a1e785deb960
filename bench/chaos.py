"""Crash recovery under chaos, as an operator meets it: N jobs through the API on the embedded
default (SQLite, the ORM broker, one `qcluster`), their workers SIGKILLed in every phase, the whole
cluster killed and started again, and some jobs cancelled, all drawn from one seed.

    .venv/bin/python bench/chaos.py                      # 16 jobs, seed 0
    .venv/bin/python bench/chaos.py --jobs 32 --seed 7 --restarts 4

Every job is the same SAE on the same corpus, so each one that completes must end with the loss
of one uninterrupted reference job trained first. The report counts:
- stuck: jobs not finished within --settle-s after the last event (the goal is 0);
- completed, failed, cancelled;
- duplicated: a job two of whose runs overlapped in time, or whose runs and attempts disagree;
- lost artifacts: files a finished job's row names (weights, cache, metadata, SAELens folder,
  feature analysis, checkpoints) that are not on disk;
- resumed vs uninterrupted: the largest relative difference of a resumed job's final loss from
  the reference's (the goal: within 0.1%).

The model is a small random Llama-shaped causal LM (bench/_setup.py, GPT-2's tokenizer) saved
under the models folder, so every phase runs, next-token evaluation included. Runs in the app's
.venv; everything lives in a temporary folder and is removed afterwards.
"""

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _setup import REPO, build_model, machine  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mistudio.settings")

PHASES = ["loading_model", "extracting_activations", "training", "computing_statistics", "analyzing_features"]
# batch_size 2: extraction lasts long enough (a few hundred ms) to be hit.
JOB = {"model_name": "bench/tiny-llama", "corpus_file": "demo_corpus.txt", "layer_number": 1, "hidden_dim": 256,
       "architecture": "topk", "k": 8, "max_epochs": 20, "min_loss": 0, "learning_rate": 0.001,
       "sae_batch_tokens": 256, "max_sequence_length": 32, "batch_size": 2}
ENV = {
    # Short sweeps, so a lost task or a dead worker is found within seconds (defaults: a minute).
    "MISTUDIO_QUEUE_STALE_S": "5", "MISTUDIO_WATCHDOG_INTERVAL_S": "1", "MISTUDIO_WORKER_SEEN_INTERVAL_S": "1",
    "MISTUDIO_QUEUE_POLL_S": "0.2", "MISTUDIO_PROGRESS_INTERVAL_S": "0.2",
    # Enough runs that random kills never exhaust a job's attempts.
    "MISTUDIO_MAX_JOB_ATTEMPTS": "12",
    # Checkpoints every 5 of 20 epochs: a kill lands before the first, between two, or after the last.
    "MISTUDIO_CHECKPOINT_EVERY_EPOCHS": "5", "MISTUDIO_MIN_SAE_STEPS": "2000",
    # Deterministic arithmetic, so resumed and uninterrupted runs can be compared exactly.
    "MISTUDIO_TOPK_DECODE": "dense", "MISTUDIO_CPU_BF16": "off", "OMP_NUM_THREADS": "1",
    "MISTUDIO_HTTPS": "0", "MISTUDIO_DEBUG": "0", "MISTUDIO_ALLOWED_HOSTS": "127.0.0.1",
    "MISTUDIO_SECRET_KEY": "chaos-bench-only-" + "0123456789abcdef" * 4,
    # One user submits every job at once: the API's per-user rates (30 job creations a minute) out of reach.
    "MISTUDIO_THROTTLE_BURST": "100000/min", "MISTUDIO_THROTTLE_EXPENSIVE": "100000/min",
}


class Api:
    def __init__(self, base_url: str, token: str):
        self.base_url, self.token = base_url, token

    def call(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"):
        request = urllib.request.Request(self.base_url + path, data=body, method=method, headers={
            "Authorization": f"Token {self.token}", "Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def upload(self, path: Path):
        boundary = "chaos-bench-boundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
                f"Content-Type: text/plain\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        return self.call("POST", "/api/v1/upload", body, f"multipart/form-data; boundary={boundary}")

    def submit(self) -> str:
        status, answer = self.call("POST", "/api/v1/train", json.dumps(JOB).encode())
        if status != 200:
            raise SystemExit(f"POST /api/v1/train answered {status}: {answer}")
        return answer["job_id"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One `manage.py qcluster` in a session of its own, so a kill takes the whole cluster."""

    def __init__(self, env: dict, log_dir: Path):
        self.env, self.log_dir, self.starts, self.process = env, log_dir, 0, None

    def start(self):
        self.starts += 1
        log = open(self.log_dir / f"qcluster-{self.starts}.log", "wb")
        self.process = subprocess.Popen([sys.executable, "manage.py", "qcluster"], cwd=REPO, env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self):
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


def plan(rng: random.Random, n_jobs: int, *, restarts: int, cancels: int) -> dict[int, list[tuple[str, str]]]:
    """Per job, the events to fire in order: (what, phase), what one of kill (the job's worker),
    restart (the whole cluster) and cancel (through the API); phase "waiting" is while queued."""
    events = {i: [] for i in range(n_jobs)}
    for i in range(n_jobs):
        for phase in sorted(rng.sample(PHASES, rng.choice([0, 1, 1, 2, 3])), key=PHASES.index):
            events[i].append(("kill", phase))
    for i in rng.sample(range(n_jobs), restarts):
        events[i].append(("restart", rng.choice(PHASES)))
    for i in rng.sample(range(n_jobs), cancels):
        events[i].append(("cancel", rng.choice(["waiting", *PHASES])))
    for i in events:  # each job's events in the order of the phases they wait for
        events[i].sort(key=lambda event: (["waiting", *PHASES].index(event[1]), event[0] == "cancel"))
    return events


def check_duplicates(job) -> str | None:
    runs = job.runs or []
    if len(runs) != job.attempts:
        return f"{len(runs)} runs recorded for {job.attempts} attempts"
    for earlier, later in zip(runs, runs[1:]):
        if earlier["ended_at"] is None or datetime.fromisoformat(earlier["ended_at"]) > datetime.fromisoformat(later["started_at"]):
            return f"run {earlier['attempt']} had not ended when run {later['attempt']} started"
    return None


def missing_artifacts(job) -> list[str]:
    named = [job.model_path, job.activations_path, job.metadata_path, job.features_dir,
             (job.exports or {}).get("saelens"), *[c.path for c in job.checkpoints.all()]]
    if job.status != "completed":
        named = [c.path for c in job.checkpoints.all()]  # a cancelled job keeps its checkpoints
    return [path for path in named if path and not Path(path).exists()]


def main() -> None:
    # One experiment, read top to bottom: its steps share the temporary folder and the timed closures
    # (a script's main, not library code; over 60 lines on purpose).
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--restarts", type=int, default=3, help="whole-cluster kills (default 3)")
    parser.add_argument("--cancels", type=int, default=2, help="jobs cancelled (default 2)")
    parser.add_argument("--settle-s", type=float, default=240, help="how long after the last event a job may take to finish")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    events = plan(rng, args.jobs, restarts=min(args.restarts, args.jobs), cancels=min(args.cancels, args.jobs))

    with tempfile.TemporaryDirectory(prefix="mistudio-chaos-") as tmp:
        folder = Path(tmp)
        env = {**os.environ, **ENV, "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
               "MISTUDIO_DATA_DIR": str(folder / "data"), "MISTUDIO_MODELS_DIR": str(folder / "models")}
        build_model(folder / "models" / "bench" / "tiny-llama", hidden_size=64, layers=2)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env=env, check=True)
        token = subprocess.run([sys.executable, "manage.py", "issue_token", "chaos"], cwd=REPO, env=env, check=True,
                               capture_output=True, text=True).stdout.strip().splitlines()[-1]
        port = free_port()
        web = subprocess.Popen([sys.executable, "-m", "gunicorn", "mistudio.wsgi", "-b", f"127.0.0.1:{port}", "-w", "2",
                                "--log-level", "warning"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=open(folder / "web.log", "wb"))
        cluster = Cluster(env, folder)
        cluster.start()
        os.environ.update({k: v for k, v in env.items() if k.startswith(("MISTUDIO_", "DATABASE_URL"))})
        import django

        django.setup()
        from training.models import TrainingJob

        api = Api(f"http://127.0.0.1:{port}", token)
        try:
            for _ in range(100):
                try:
                    if api.call("GET", "/health")[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            else:
                raise SystemExit(f"the web server never answered /health (its log: {folder / 'web.log'})")
            assert api.upload(REPO / "samples" / "demo_corpus.txt")[0] == 200
            reference = api.submit()
            reference_job = wait_finished(TrainingJob, [reference], deadline=time.monotonic() + 600)[0]
            if reference_job.status != "completed":
                raise SystemExit(f"the reference job ended {reference_job.status}: {reference_job.message}")

            started = time.monotonic()
            ids = [api.submit() for _ in range(args.jobs)]
            fired = {what: {} for what in ("kill", "restart", "cancel")}  # per phase
            missed = 0
            pending = {job_id: list(events[i]) for i, job_id in enumerate(ids)}
            last_event = time.monotonic()
            while any(pending.values()):
                for job_id, todo in pending.items():
                    if not todo:
                        continue
                    job = TrainingJob.objects.filter(pk=job_id).values("status", "phase", "worker_pid").get()
                    what, phase = todo[0]
                    if job["status"] in ("completed", "failed", "cancelled"):
                        missed += len(todo)  # it ended before the phase came round again
                        todo.clear()
                        continue
                    here = "waiting" if job["status"] == "queued" else job["phase"]
                    if here != phase or (what != "cancel" and job["status"] != "running"):
                        continue
                    if what == "kill":
                        try:
                            os.kill(job["worker_pid"], signal.SIGKILL)
                        except (ProcessLookupError, TypeError):
                            continue
                    elif what == "restart":
                        cluster.kill()
                        time.sleep(rng.uniform(0, 2))  # a reboot takes a moment
                        cluster.start()
                    else:
                        api.call("POST", f"/api/v1/train/{job_id}/cancel")
                    fired[what][phase] = fired[what].get(phase, 0) + 1
                    todo.pop(0)
                    last_event = time.monotonic()
                time.sleep(0.005)
            jobs = wait_finished(TrainingJob, ids, deadline=last_event + args.settle_s)
            elapsed = time.monotonic() - started
        finally:
            cluster.stop()
            web.terminate()
            web.wait()

        report(args, jobs, reference_job, fired, missed, elapsed)


def wait_finished(model, ids, *, deadline):
    while time.monotonic() < deadline:
        if not model.objects.filter(pk__in=ids).exclude(status__in=["completed", "failed", "cancelled"]).exists():
            break
        time.sleep(0.5)
    order = {job_id: i for i, job_id in enumerate(ids)}
    return sorted(model.objects.filter(pk__in=ids), key=lambda job: order[job.pk])


def report(args, jobs, reference, fired, missed, elapsed):
    counts = {status: sum(job.status == status for job in jobs) for status in ("completed", "failed", "cancelled")}
    stuck = [job for job in jobs if job.status in ("queued", "running")]
    duplicated = {job.pk: why for job in jobs if (why := check_duplicates(job))}
    lost = {job.pk: paths for job in jobs if (paths := missing_artifacts(job))}
    expected = reference.training_stats["final_loss"]
    resumed = [job for job in jobs if job.status == "completed" and job.attempts > 1]
    uninterrupted = [job for job in jobs if job.status == "completed" and job.attempts == 1]

    def worst(group):
        return max((abs(job.training_stats["final_loss"] - expected) / abs(expected) for job in group), default=None)

    def pct(value):
        return "n/a" if value is None else "0 (bit-identical)" if value == 0 else f"{100 * value:.2g}%"

    def by_phase(what):
        return f"{sum(fired[what].values())} ({', '.join(f'{p} {n}' for p, n in sorted(fired[what].items())) or '-'})"

    print(f"chaos: {args.jobs} jobs, seed {args.seed}, {args.restarts} restarts, {args.cancels} cancels, on {machine()}")
    print(f"events fired: worker kills {by_phase('kill')}; cluster restarts {by_phase('restart')}; "
          f"cancels {by_phase('cancel')}; {missed} not reached (the job ended first)")
    print(f"stuck {len(stuck)} | completed {counts['completed']} | failed {counts['failed']} | "
          f"cancelled {counts['cancelled']} | duplicated {len(duplicated)} | lost artifacts {len(lost)}")
    print(f"resumed jobs: {len(resumed)} (runs: {sum(job.attempts for job in resumed)}); final loss vs the "
          f"uninterrupted reference: worst {pct(worst(resumed))} resumed, {pct(worst(uninterrupted))} uninterrupted")
    print(f"wall time after submitting: {elapsed:.0f} s")
    for job in stuck:
        print(f"  stuck {job.pk}: {job.status}/{job.phase}: {job.message}")
    for job_id, why in duplicated.items():
        print(f"  duplicated {job_id}: {why}")
    for job_id, paths in lost.items():
        print(f"  lost {job_id}: {', '.join(paths)}")
    for job in jobs:
        if job.status == "failed":
            print(f"  failed {job.pk}: {job.error}")
    resumed_worst = worst(resumed)
    ok = not stuck and not duplicated and not lost and (resumed_worst is None or resumed_worst <= 1e-3)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
