"""A job whose memory estimate exceeds all the memory of the device its worker gives it fails at
once, before anything is loaded, saying what it needs, what the device has and what to lower:
its run would be killed for memory and so would every resumed run after it. A job staff forced
is run as asked."""
import pytest

from corpora.services import corpus_add_from_path
from tests.model_fixtures import SAMPLE_CORPUS
from training import recovery, services
from training.models import TrainingJob
from training.worker.device import check_fits_device
from training.worker.job import job_run

pytestmark = pytest.mark.django_db(transaction=True)

HUGE = {"hidden_dim": 1_048_576, "sae_batch_tokens": 1_048_576}


def forced_job(owner, **fields):
    """Created as staff forcing it: the web process's refusal is what this test goes past."""
    corpus_add_from_path(owner=owner, path=SAMPLE_CORPUS)
    return services.job_create(owner=owner, enqueue=False, request=services.JobRequest(
        model_name="tiny/gpt2", corpus_file=SAMPLE_CORPUS.name, layer_number=1, max_epochs=1, force=True, **fields))


@pytest.mark.slow
def test_a_job_that_cannot_fit_its_device_fails_before_loading_and_is_not_run_again(charlie, hub_models):
    job = forced_job(charlie, **HUGE)
    # As a job for another host's GPU whose size was unknown at submission is recorded.
    TrainingJob.objects.filter(pk=job.pk).update(memory_check="not checked: GPU 3 is on another host")
    job = job_run(job.id)
    assert job.status == TrainingJob.Status.FAILED
    assert job.message.startswith("Training failed: This job needs about ")
    assert "but system RAM has " in job.message and "lower hidden_dim (now 1048576)" in job.message
    assert job.attempts == 1 and job.runs[-1]["ended"] == TrainingJob.Status.FAILED
    assert not job.activations_path and not job.model_path
    assert recovery.jobs_recover_stale() == []
    assert TrainingJob.objects.get(pk=job.pk).status == TrainingJob.Status.FAILED


def test_a_forced_job_and_one_that_fits_pass_the_workers_check(charlie, hub_models):
    forced = forced_job(charlie, **HUGE)
    assert forced.memory_check.startswith("forced: ")
    check_fits_device(forced, "cpu")
    fits = services.job_create(owner=charlie, enqueue=False, request=services.JobRequest(
        model_name="tiny/gpt2", corpus_file=SAMPLE_CORPUS.name, layer_number=1, hidden_dim=16))
    check_fits_device(fits, "cpu")
