from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Training"

    def ready(self):
        from django_q.signals import post_spawn

        from engine.models.resolve import forbid_implicit_token

        # No hub call of this process sends the machine's saved Hugging Face login unless handed
        # it (training.hub): transformers makes some calls without passing a caller's token on.
        forbid_implicit_token()

        from training.tasks import recover_on_worker_start

        # Every worker process that starts (after a crash, a job, or a cluster start) first looks
        # for jobs whose worker died and queues them to resume.
        post_spawn.connect(recover_on_worker_start, dispatch_uid="training.recover_on_worker_start")
        # And every live worker's watchdog (gpus) runs the recovery checks over jobs: resume those whose
        # worker died, then queue again those whose task was lost (freeing stale leases first).
        from gpus.services import watchdog_register

        watchdog_register("training.recovery.jobs_recover_stale")
        watchdog_register("training.recovery.jobs_requeue_orphans")
        # And removes what an upload whose request died left half-written.
        watchdog_register("corpora.services.partial_uploads_remove_stale")
        # A user's storage (corpora.quotas) counts their jobs' files beside their corpora.
        from corpora.quotas import storage_counter_register

        storage_counter_register("training.admission.quotas.artifacts_bytes")
