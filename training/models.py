import secrets

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from engine import sae as architectures
from engine.disk import CACHE_MODES
from engine.models.hooks import HOOK_POINTS
from engine.text.packing import PACKINGS
from training.defaults import DEFAULTS


def new_job_id():
    """The seed's id format: train_<UTC date>_<UTC time>_<4 random digits>."""
    now = timezone.now()
    return f"train_{now:%Y%m%d_%H%M%S}_{secrets.randbelow(10_000):04d}"


def architecture_choices():
    """The registered SAE architectures (engine.sae), read when asked: a test may register one."""
    return [(name, name) for name in architectures.names()]


def new_sweep_id():
    """As a job's id: sweep_<UTC date>_<UTC time>_<4 random digits>."""
    now = timezone.now()
    return f"sweep_{now:%Y%m%d_%H%M%S}_{secrets.randbelow(10_000):04d}"


# Draws of a fresh id before giving up: with 10,000 ids a second, 20 taken in a row would take
# thousands of jobs made in one second.
ID_DRAWS = 20


class FreshIdQuerySet(models.QuerySet):
    def create_with_fresh_id(self, **fields):
        """Insert a row under a new id from the model's default, drawing another while the one drawn
        is taken. The seed's ids keep 4 random digits a second, so two jobs made in the same second
        (a sweep's members, or 10 requests a second) would otherwise collide now and then."""
        new_id = self.model._meta.pk.default
        for _ in range(ID_DRAWS):
            candidate = new_id()
            try:
                with transaction.atomic():  # a savepoint: a taken id undoes this insert only
                    return self.create(id=candidate, **fields)
            except IntegrityError:
                if not self.filter(pk=candidate).exists():
                    raise  # another constraint failed: drawing again would not help
        raise IntegrityError(f"No free {self.model.__name__} id after {ID_DRAWS} draws")


def sees_all(user, model: str, action: str = "view") -> bool:
    """Whether `user` may `action` (view, change) everyone's `model` rows: staff with that model
    permission (a superuser has every one). Being staff alone is not enough."""
    return bool(user.is_staff and user.has_perm(f"training.{action}_{model}"))


class SweepQuerySet(FreshIdQuerySet):
    def visible_to(self, user):
        return self if sees_all(user, "sweep") else self.filter(owner=user)


class Sweep(models.Model):
    """A family of jobs on one model and corpus trained from one pass over it (engine.run.sweep):
    every layer x hook point x member of its request, each a TrainingJob of its own."""

    id = models.CharField(primary_key=True, max_length=64, default=new_sweep_id, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="sweeps")
    model_name = models.CharField(max_length=500)
    corpus = models.ForeignKey("corpora.Corpus", on_delete=models.PROTECT, related_name="sweeps")
    layers = models.JSONField(help_text="Layer numbers the members read at.")
    hook_points = models.JSONField(help_text="Hook points the members read at, in each layer.")
    members = models.JSONField(help_text="Each member's overrides of the base's SAE fields.")
    # What its one pass over the corpus did, written by the worker once the sites are extracted.
    lm_forward_batches = models.IntegerField(null=True, blank=True, help_text="Forward passes of the language model.")
    tokens_extracted = models.BigIntegerField(null=True, blank=True)
    extraction_seconds = models.FloatField(null=True, blank=True)
    disk_plan = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)

    objects = SweepQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return self.id

    def visible_to(self, user) -> bool:
        return self.owner_id == user.pk or sees_all(user, "sweep")

    def cancellable_by(self, user) -> bool:
        return self.owner_id == user.pk or sees_all(user, "sweep", "change")


class TrainingJobQuerySet(FreshIdQuerySet):
    def visible_to(self, user):
        """A user sees their own jobs; staff with the view permission see everyone's
        (TrainingJob.visible_to: one job)."""
        return self if sees_all(user, "trainingjob") else self.filter(owner=user)


class TrainingJob(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Phase(models.TextChoices):
        WAITING = "waiting"
        LOADING = "loading_model"
        EXTRACTING = "extracting_activations"
        TRAINING = "training"
        EVALUATING = "computing_statistics"
        ANALYZING = "analyzing_features"
        DONE = "done"

    class Quantization(models.TextChoices):
        NONE = "none"
        EIGHT_BIT = "8bit"
        FOUR_BIT = "4bit"

    FINISHED = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

    id = models.CharField(primary_key=True, max_length=64, default=new_job_id, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="training_jobs"
    )

    # What to train on: a model and a corpus, or (CLI only) a file of activations someone already has.
    model_name = models.CharField(max_length=500, blank=True)
    model_location = models.CharField(max_length=1024, blank=True, help_text="Where the model resolved when the job was made.")
    model_source = models.CharField(max_length=16, blank=True, help_text="local, models_dir, bundled or hub")
    model_revision = models.CharField(
        max_length=64, blank=True,
        help_text="The hub commit the model's config was checked at, which the worker loads; blank for a local model.",
    )
    corpus = models.ForeignKey(
        "corpora.Corpus", null=True, blank=True, on_delete=models.PROTECT, related_name="jobs"
    )
    activations_file = models.CharField(max_length=1024, blank=True)
    # A sweep's member: its sweep, and the overrides of the sweep's base it trains with.
    sweep = models.ForeignKey(Sweep, null=True, blank=True, on_delete=models.CASCADE, related_name="jobs")
    sweep_settings = models.JSONField(null=True, blank=True)

    # The seed's training parameters.
    layer_number = models.IntegerField(default=DEFAULTS.layer_number)
    hidden_dim = models.IntegerField(default=DEFAULTS.hidden_dim)
    sparsity_coeff = models.FloatField(default=DEFAULTS.sparsity_coeff)
    learning_rate = models.FloatField(default=DEFAULTS.learning_rate)
    batch_size = models.IntegerField(default=DEFAULTS.batch_size, help_text="Sequences per forward pass of the language model.")
    max_epochs = models.IntegerField(default=DEFAULTS.max_epochs)
    min_loss = models.FloatField(default=DEFAULTS.min_loss)
    gpu_id = models.IntegerField(null=True, blank=True)
    gpu_ids = models.JSONField(null=True, blank=True, help_text="GPUs of one host that train the SAE together (DDP), instead of gpu_id.")
    max_sequence_length = models.IntegerField(default=DEFAULTS.max_sequence_length)
    sae_batch_tokens = models.IntegerField(default=DEFAULTS.sae_batch_tokens, help_text="Tokens per SAE optimizer step.")
    quantization = models.CharField(max_length=8, choices=Quantization.choices, default=DEFAULTS.quantization)
    # Registered architectures (engine.sae); k and target_l0 are the request fields they take.
    architecture = models.CharField(max_length=architectures.MAX_NAME_LENGTH, choices=architecture_choices, default=DEFAULTS.architecture)
    k = models.IntegerField(null=True, blank=True, help_text="Active features per token (topk, batchtopk).")
    target_l0 = models.FloatField(null=True, blank=True, help_text="relu, jumprelu and gated: the L0 to hold (relu and gated steer their L1 weight toward it, jumprelu penalises the distance).")
    matryoshka_widths = models.JSONField(null=True, blank=True,
                                         help_text="matryoshka_batchtopk: the nested prefixes' widths, hidden_dim last.")
    # Where in block layer_number the SAE reads (engine.models.hooks) and how the corpus's sequences are
    # made (engine.text.sequences). Blank and null for a job on an activations file: its rows came from
    # elsewhere.
    hook_point = models.CharField(max_length=16, choices=[(p, p) for p in HOOK_POINTS], default=DEFAULTS.hook_point,
                                  blank=True, help_text="resid_post, resid_pre, mlp_out, attn_out or mlp_in of block layer_number (a transcoder: mlp_out, what it predicts).")
    exclude_special_tokens = models.BooleanField(null=True, blank=True, default=DEFAULTS.exclude_special_tokens,
                                                 help_text="No activation rows at BOS/CLS/SEP/EOS/padding positions.")
    prepend_bos = models.BooleanField(null=True, blank=True, default=DEFAULTS.prepend_bos,
                                      help_text="A causal LM's sequences start with its tokenizer's BOS.")
    # How the corpus's documents become sequences (engine.text.packing), the tokens the SAE trains on
    # at most, and whether the activations are cached (engine.disk). job_create records the
    # packing it resolved (the corpus format's default when none was asked for). A job on an
    # activations file has no packing and no cache mode (null and blank); its budget applies.
    packing = models.CharField(max_length=16, choices=[(p, p) for p in PACKINGS], null=True, blank=True,
                               default=DEFAULTS.packing, help_text="lines, documents or concat (engine.text.packing).")
    training_tokens = models.BigIntegerField(null=True, blank=True, default=DEFAULTS.training_tokens,
                                             help_text="Tokens the SAE trains on at most; null: max_epochs passes.")
    cache_activations = models.CharField(max_length=8, choices=[(m, m) for m in CACHE_MODES], blank=True,
                                         default=DEFAULTS.cache_activations,
                                         help_text="auto, always or never: whether the activations are cached on disk.")

    # The Hugging Face token, Fernet-encrypted, kept only while the job may still need it.
    encrypted_hf_token = models.TextField(blank=True, editable=False)
    requires_token = models.BooleanField(default=False)
    memory_check = models.CharField(max_length=500, blank=True)
    # What the run will write to disk, as job_create planned it (engine.disk.DiskPlan, with how
    # the corpus's tokens were estimated); null for a job on an activations file.
    disk_plan = models.JSONField(null=True, blank=True)

    # Live state, written by the worker.
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    phase = models.CharField(max_length=32, choices=Phase.choices, default=Phase.WAITING)
    progress = models.FloatField(default=0.0)
    current_epoch = models.IntegerField(default=0)
    current_loss = models.FloatField(null=True, blank=True)
    eta_s = models.IntegerField(null=True, blank=True)
    message = models.TextField(blank=True)
    device = models.CharField(max_length=32, blank=True)
    tokens_per_s = models.FloatField(null=True, blank=True, help_text="Throughput of the current phase.")
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # When its task was last put on a queue: a job queued long after that, while a worker that
    # could take it is idle, lost its task (a killed worker's buffer) and is put on a queue again.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # Which worker runs it, and when that worker last said it was alive (crash recovery).
    attempts = models.IntegerField(default=0, help_text="Runs started, resumed ones included.")
    worker_host = models.CharField(max_length=255, blank=True)
    worker_pid = models.IntegerField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # One entry per run (attempt): who ran it, when, how it ended, and the seconds it spent
    # extracting and training (written with its progress, so a killed run still counts).
    runs = models.JSONField(default=list, blank=True)
    # Whether the first epoch follows the extraction order (a run that trains while extracting),
    # decided once, by the job's first run: a rerun with no checkpoint trains the same epoch.
    first_epoch_in_arrival_order = models.BooleanField(null=True, blank=True)

    # Results.
    model_info = models.JSONField(null=True, blank=True)
    training_stats = models.JSONField(null=True, blank=True)
    evaluation = models.JSONField(null=True, blank=True)
    exports = models.JSONField(null=True, blank=True)
    # Points written with each progress report while training: step, epoch, loss, mse, l0,
    # explained_variance, tokens_per_s (thinned to a bounded count), so pages draw curves live.
    training_curve = models.JSONField(default=list, blank=True)
    # The feature analysis (engine.evaluation.features): its folder and what it holds.
    features_dir = models.CharField(max_length=1024, blank=True)
    features = models.JSONField(null=True, blank=True)
    model_path = models.CharField(max_length=1024, blank=True)
    activations_path = models.CharField(max_length=1024, blank=True)
    # What the run that extracted activations_path measured (kept for the result of a resumed run).
    extraction_stats = models.JSONField(null=True, blank=True)
    metadata_path = models.CharField(max_length=1024, blank=True)
    error = models.TextField(blank=True)
    # When retention (training.artifacts.retention) deleted the job's files: the row stays, its downloads
    # and features answer 410 saying so.
    artifacts_purged_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TrainingJobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return self.id

    @property
    def is_finished(self):
        return self.status in self.FINISHED

    @property
    def is_running(self):
        return self.status == self.Status.RUNNING

    def visible_to(self, user) -> bool:
        """The rule of TrainingJobQuerySet.visible_to, for one job."""
        return self.owner_id == user.pk or sees_all(user, "trainingjob")

    def cancellable_by(self, user) -> bool:
        """Its owner, or staff with the change permission."""
        return self.owner_id == user.pk or sees_all(user, "trainingjob", "change")

    @property
    def warnings(self) -> list[str]:
        """What the engine found wrong with the trained SAE (engine.run.verdict), kept with its
        evaluation; [] before one, and for jobs evaluated before warnings were."""
        return list((self.evaluation or {}).get("warnings") or [])

    @property
    def source_description(self):
        if self.activations_file:
            return f"activations {self.activations_file}"
        return self.model_name

    @property
    def last_checkpoint(self):
        return self.checkpoints.order_by("-epoch", "-step").first()


class Checkpoint(models.Model):
    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="checkpoints")
    epoch = models.IntegerField()
    step = models.IntegerField()
    path = models.CharField(max_length=1024)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["epoch", "step"]

    def __str__(self):
        return self.path
