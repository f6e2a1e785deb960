"""A sweep's run in the worker's pipeline, in-process on a real tiny causal LM: every member a
complete job, equal to the single job with its settings and seed, one forward pass per batch for
all of them, and a failing member failing alone."""
import json
from pathlib import Path

import pytest
import torch

from corpora.services import corpus_add_from_path
from tests.model_fixtures import SAMPLE_CORPUS
from training import services, sweeps
from training.models import TrainingJob
from training.worker.job import job_run
from training.worker.sweep import sweep_run

pytestmark = pytest.mark.django_db(transaction=True)

BASE = dict(model_name="tiny/llama", corpus_file=SAMPLE_CORPUS.name, max_sequence_length=32, batch_size=8,
            hidden_dim=64, max_epochs=1, min_loss=0.0, sae_batch_tokens=256, architecture="topk", k=4,
            learning_rate=1e-3)


def make_sweep(owner, members, layers=(0, 1), **fields):
    corpus_add_from_path(owner=owner, path=SAMPLE_CORPUS)
    request = sweeps.SweepRequest(base=services.JobRequest(**{**BASE, **fields}), layers=list(layers), members=members)
    return sweeps.sweep_create(owner=owner, request=request, enqueue=False)


@pytest.mark.slow
def test_every_member_completes_as_its_single_job_would_from_one_pass(alice, hub_models):
    sweep = make_sweep(alice, [{}, {"architecture": "batchtopk", "k": 8}])
    ended = []
    sweep = sweep_run(sweep.id, on_member_end=lambda job: ended.append(job.status))
    assert ended == ["completed"] * 4
    lines = len([line for line in SAMPLE_CORPUS.read_text().splitlines() if line.strip()])
    # One forward per batch of 8 sequences, for both layers and all four SAEs.
    assert sweep.lm_forward_batches == -(-lines // 8) and sweep.tokens_extracted > 420
    document = sweeps.sweep_document(sweep)
    assert document["status"] == "completed" and document["progress"] == 1.0
    jobs = list(sweep.jobs.order_by("created_at", "pk"))
    assert len({job.activations_path for job in jobs}) == 2  # one file per site, shared by its members

    for job, member in zip(jobs, document["members"]):
        assert member["metrics"]["explained_variance"] == job.evaluation["explained_variance"]
        assert job.evaluation["ce_loss_reason"] is None and job.features_dir and Path(job.features_dir).is_dir()
        cfg = json.loads((Path(job.exports["saelens"]) / "cfg.json").read_text())
        assert cfg["metadata"]["hook_name"] == f"blocks.{job.layer_number}.hook_resid_post"
        assert json.loads(Path(job.metadata_path).read_text())["job_id"] == job.id
        assert job.training_stats["extraction"]["tokens"] == sweep.tokens_extracted
    # The same seed and settings as a job of its own (which extracts for itself): equal weights, to
    # float rounding (the single job trains while it extracts, the member from the shared file).
    for job in (jobs[3],):
        single = services.job_create(owner=alice, enqueue=False, request=services.JobRequest(**{
            **BASE, "layer_number": job.layer_number, "architecture": job.architecture, "k": job.k,
            "cache_activations": "always"}))
        single = job_run(single.id)
        assert single.status == "completed", single.message
        ours, theirs = torch.load(job.model_path), torch.load(single.model_path)
        for name in theirs:
            assert torch.allclose(ours[name], theirs[name], atol=1e-5), name
        assert job.evaluation["explained_variance"] == pytest.approx(single.evaluation["explained_variance"], abs=1e-4)
        assert job.evaluation["l0"] == pytest.approx(single.evaluation["l0"], abs=1e-3)


@pytest.mark.slow
def test_a_member_that_diverges_fails_alone_with_its_reason(alice, hub_models):
    # A learning rate no SAE survives (the API caps it at 1; the service takes what it is given).
    sweep = make_sweep(alice, [{}, {"learning_rate": 1e12}], layers=(1,))
    sweep_run(sweep.id)
    good, diverged = sweep.jobs.order_by("created_at", "pk")
    assert good.status == "completed", good.message
    assert diverged.status == "failed" and "lower learning_rate" in diverged.error, diverged.error
    assert sweeps.sweep_document(sweep)["status"] == "failed"


@pytest.mark.slow
def test_a_member_cancelled_before_its_turn_ends_cancelled_and_the_rest_complete(alice, hub_models):
    sweep = make_sweep(alice, [{}, {"k": 8}, {"k": 16}], layers=(1,))
    first, second, third = sweep.jobs.order_by("created_at", "pk")

    def cancel_second(job):
        if job.pk == first.pk:
            services.job_cancel(TrainingJob.objects.get(pk=second.pk))

    sweep_run(sweep.id, on_member_end=cancel_second)
    statuses = [job.status for job in sweep.jobs.order_by("created_at", "pk")]
    assert statuses == ["completed", "cancelled", "completed"]
    assert TrainingJob.objects.get(pk=second.pk).message == "Cancelled before its turn in the sweep; nothing was trained"
    assert sweeps.sweep_document(sweep)["status"] == "cancelled"
