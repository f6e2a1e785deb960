"""The sweep every starting worker runs: which running jobs lost their worker, and what happens."""
import os
import socket
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.concurrency import at_once
from tests.django_fixtures import queued_tasks
from training import recovery, services
from training.models import TrainingJob

pytestmark = pytest.mark.django_db(transaction=True)
RACERS, ROUNDS = 6, 5  # workers racing for one job, and how many times they race


def running(alice, **fields):
    values = dict(owner=alice, model_name="tiny/gpt2", status="running", attempts=1, worker_host=socket.gethostname(),
                  worker_pid=os.getpid(), heartbeat_at=timezone.now())
    values.update(fields)
    return TrainingJob.objects.create(**values)


def test_a_job_whose_worker_pid_is_gone_is_queued_again(alice, dead_pid):
    job = running(alice, worker_pid=dead_pid)
    assert recovery.jobs_recover_stale() == [job.id]
    job.refresh_from_db()
    assert job.status == "queued" and "resumes from its last checkpoint" in job.message
    assert [task["args"] for task in queued_tasks()] == [(job.id,)]


def test_a_live_worker_with_a_fresh_heartbeat_is_left_alone(alice):
    job = running(alice)
    assert recovery.jobs_recover_stale() == []
    job.refresh_from_db()
    assert job.status == "running"


def test_a_silent_worker_on_another_host_is_presumed_dead(alice, settings):
    job = running(alice, worker_host="gpu-host-7", worker_pid=1,
                  heartbeat_at=timezone.now() - timedelta(seconds=settings.HEARTBEAT_STALE_S + 1))
    assert recovery.jobs_recover_stale() == [job.id]
    fresh = running(alice, worker_host="gpu-host-7", worker_pid=1)
    assert recovery.jobs_recover_stale() == []
    fresh.refresh_from_db()
    assert fresh.status == "running"


def test_a_job_out_of_attempts_fails_with_a_clear_message(alice, dead_pid, settings):
    job = running(alice, worker_pid=dead_pid, attempts=settings.MAX_JOB_ATTEMPTS, encrypted_hf_token="x")
    recovery.jobs_recover_stale()
    job.refresh_from_db()
    assert job.status == "failed" and job.encrypted_hf_token == ""
    assert "MISTUDIO_MAX_JOB_ATTEMPTS" in job.message and "out-of-memory" in job.message
    assert queued_tasks() == []


def test_a_lost_job_that_was_being_cancelled_ends_cancelled(alice, dead_pid):
    job = running(alice, worker_pid=dead_pid, cancel_requested_at=timezone.now())
    recovery.jobs_recover_stale()
    job.refresh_from_db()
    assert job.status == "cancelled"


def test_a_job_is_claimed_by_one_worker_only(alice):
    # Workers racing for the job's task (one re-queued by the sweep while the first still holds it):
    # each in its own connection, all at once, again and again; one claim lands each time.
    for _ in range(ROUNDS):
        job = TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2")
        claims = at_once(RACERS, lambda _: services.job_claim(job.id))
        assert sum(claim is not None for claim in claims) == 1, claims
        job.refresh_from_db()
        assert job.status == "running" and job.attempts == 1 and len(job.runs) == 1
        assert job.worker_pid == os.getpid()
