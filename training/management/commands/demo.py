import json
import os
import secrets
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse
from rest_framework.utils.encoders import JSONEncoder

from corpora.models import Corpus
from mistudio.accounts import user_issue_token
from corpora.services import corpus_add_from_path
from engine import sae as architectures
from engine.models.resolve import BUNDLED_CAUSAL_LM_NAME
from mistudio.errors import ServiceError
from training import documents, services
from training.admission import model as modelcheck
from training.api import serializers
from training.models import TrainingJob
from training.requests import JobRequest

SAMPLE_CORPUS = settings.BASE_DIR / "samples" / "demo_corpus.txt"


class Command(BaseCommand):
    help = ("Train one SAE on a bundled model (SmolLM2-135M-Instruct unless --model says otherwise) through the "
            "real queue and a real worker process.")

    def add_arguments(self, parser):
        parser.add_argument("--model", default=BUNDLED_CAUSAL_LM_NAME,
                            help="a model name as the API takes it, e.g. sentence-transformers/all-MiniLM-L6-v2 "
                                 "(bundled too) or a folder in the models folder")
        parser.add_argument("--layer-number", type=int, default=None,
                            help="0-based layer; by default the middle one (SmolLM2: 15 of 30, MiniLM: 3 of 6)")
        parser.add_argument("--hidden-dim", type=int, default=1536)
        parser.add_argument("--max-epochs", type=int, default=50)
        parser.add_argument("--architecture", default="topk")
        parser.add_argument("--k", type=int, default=32)
        parser.add_argument("--timeout-s", type=float, default=900)
        parser.add_argument("--base-url", default="http://127.0.0.1:8001",
                            help="where `make serve` answers: the job page's URL is printed under it")

    def handle(self, *args, model, layer_number, hidden_dim, max_epochs, architecture, k, timeout_s, base_url,
               **options):
        if layer_number is None:
            try:
                layer_number = modelcheck.describe(model).info.total_layers // 2
            except ServiceError as err:
                raise CommandError(str(err)) from None
        user, _ = get_user_model().objects.get_or_create(username="demo", defaults={"is_staff": True})
        corpus = Corpus.objects.filter(owner=user, name=SAMPLE_CORPUS.name).first() or corpus_add_from_path(
            owner=user, path=SAMPLE_CORPUS
        )
        self.stdout.write(f"Corpus {corpus.name}: {corpus.lines_count} lines, {corpus.size_bytes} bytes")
        job = services.job_create(
            owner=user,
            request=JobRequest(
                model_name=model,
                corpus_file=corpus.name,
                layer_number=layer_number,
                hidden_dim=hidden_dim,
                max_epochs=max_epochs,
                architecture=architecture,
                k=k if architecture in architectures.taking("k") else None,
                max_sequence_length=128,
            ),
        )
        self.stdout.write(f"Queued {job.id} ({model}, layer {layer_number}); starting a worker (manage.py qcluster)")
        worker = subprocess.Popen(
            [sys.executable, str(settings.BASE_DIR / "manage.py"), "qcluster"],
            env={**os.environ, "PYTORCH_NVML_BASED_CUDA_CHECK": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            job = self._follow(job.id, timeout_s)
        finally:
            # The cluster's parent stops its workers in order; a signal to the whole group races that.
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        result = serializers.ResultSerializer(documents.result_document(job)).data
        self.stdout.write(json.dumps(result, indent=2, cls=JSONEncoder))
        if job.status != TrainingJob.Status.COMPLETED:
            raise CommandError(f"The demo job ended {job.status}: {job.message}")
        _, token = user_issue_token(username=user.username)
        self.stdout.write(f"\nAPI token for user 'demo' (Authorization: Token ...):\n{token}")
        if not user.password or not user.has_usable_password():
            # Pages need a login: a fresh password, printed once, for this local demo user only.
            password = secrets.token_urlsafe(12)
            user.set_password(password)
            user.save(update_fields=["password"])
            login = f" as demo / {password}"
        else:
            login = " as demo (password set earlier; `manage.py changepassword demo` to reset it)"
        page = base_url.rstrip("/") + reverse("job-page", args=[job.id])
        self.stdout.write(f"\nThe job's page, with its curves and features (start `make serve`, log in{login}):\n{page}")

    def _follow(self, job_id, timeout_s):
        """The job followed on one progress bar (stderr), its phase and message beside it, until it
        ends; then the bar's last line is followed by one line with how the job ended."""
        from tqdm import tqdm

        deadline = time.monotonic() + timeout_s
        # The underlying stream: Django's wrapper would end each of tqdm's carriage-return updates with a newline.
        bar = tqdm(total=1.0, file=getattr(self.stderr, "_out", sys.stderr), mininterval=0, dynamic_ncols=True,
                   bar_format="{l_bar}{bar}| [{elapsed}]{postfix}")
        try:
            while time.monotonic() < deadline:
                job = TrainingJob.objects.get(pk=job_id)
                bar.n = min(job.progress, 1.0)
                bar.set_description(job.phase or job.status, refresh=False)
                loss = f"loss {job.current_loss:.5g}  " if (
                    job.current_loss is not None and job.phase == TrainingJob.Phase.TRAINING) else ""
                bar.set_postfix_str(f"{loss}{job.message}", refresh=False)
                bar.refresh()
                if job.is_finished:
                    break
                time.sleep(1)
            else:
                job = None
        finally:
            bar.close()
        if job is None:
            services.job_cancel(TrainingJob.objects.get(pk=job_id))
            raise CommandError(f"The demo job did not finish within {timeout_s:.0f} s; it was cancelled.")
        evaluation = job.evaluation or {}
        measured = [f"{name} {evaluation[name]:.4g}" for name in ("explained_variance", "l0", "ce_loss_recovered")
                    if evaluation.get(name) is not None]
        self.stderr.write(f"{job.id} {job.status}: {job.message}" + (f" ({', '.join(measured)})" if measured else ""))
        return job
