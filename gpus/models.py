from django.db import models


class Worker(models.Model):
    """One worker slot: a GPU of a host (or a host's default-queue worker). Its row is the lease:
    `job` is set, with one conditional UPDATE, while a job trains on the slot, so two workers
    started on one GPU by mistake never train on it at once. A DDP job leases the slot of every GPU
    it trains on, so one job may hold several rows; a GPU that no worker serves gets a row for its
    lease alone, never seen (`last_seen_at` null). `last_seen_at` says the worker is alive."""

    host = models.CharField(max_length=255)
    device = models.CharField(max_length=32, help_text="gpuN (the host's GPU N) or default (CPU or any GPU)")
    gpu_index = models.IntegerField(null=True, blank=True)
    queue = models.CharField(max_length=64, help_text="The django-q2 queue (cluster name) it takes jobs from")
    pid = models.IntegerField(null=True, blank=True)
    gpu_name = models.CharField(max_length=255, blank=True)
    memory_total = models.BigIntegerField(null=True, blank=True)
    fake = models.BooleanField(default=False, help_text="Tests only: a GPU slot that trains on the CPU")
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(null=True, blank=True, db_index=True,
                                        help_text="Null for a slot no worker has served: a DDP job leased its GPU")
    job = models.ForeignKey("training.TrainingJob", null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="leases")
    leased_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["host", "device"], name="one_worker_row_per_host_device")]
        ordering = ["host", "device"]

    def __str__(self):
        return f"{self.host}/{self.device}"
