"""miStudio settings: every value comes from the environment (each documented in docs/settings.md)."""
import os
import secrets
import socket
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from csp.constants import NONCE, NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from engine.defaults import EVAL_DEFAULTS, RUN_DEFAULTS
from mistudio import cli
from mistudio.database import database_settings
from mistudio.env import env_bool, env_float, env_int, env_list, env_path, env_rate, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("MISTUDIO_DEBUG", False)

# Everything miStudio writes is private to the account that runs it: on a shared GPU box another
# user must not read the sessions in the database, the corpora or the SAEs. One mask for the whole
# process, set before anything is written (this module is the first thing every miStudio process
# imports, and the workers and their children inherit it), rather than a mask around each write:
# the mask is per process, so changing it back and forth would race between threads.
os.umask(0o077)

# Everything miStudio writes lives here: the embedded database, corpora, activations, SAEs.
# A folder that exists with a looser mode is left as it is: the `mistudio.W001` check warns.
# `manage.py <command> --help` writes nothing (mistudio.cli), so a newcomer's first look makes no folder.
DATA_DIR = env_path("MISTUDIO_DATA_DIR", BASE_DIR / "data")
if not cli.answering_help:
    DATA_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)

# Models named like hub ids are looked up here first: <MODELS_DIR>/microsoft/Phi-4.
MODELS_DIR = env_path("MISTUDIO_MODELS_DIR", DATA_DIR / "hub-models")
# A local model path in an API request must lie inside MODELS_DIR or one of these (the CLI, run
# by someone on the machine, may name any path).
EXTRA_LOCAL_MODEL_ROOTS = [Path(root).expanduser().resolve() for root in env_list("MISTUDIO_LOCAL_MODEL_ROOTS", [])]
# A GGUF model is converted once into a safetensors folder here, by the first worker that loads it.
MODELS_CACHE_DIR = env_path("MISTUDIO_MODELS_CACHE_DIR", DATA_DIR / "converted")


def _secret_key():
    """An explicit key wins. Without one, a development or demo server (DEBUG on) makes one random
    key per data folder and keeps it; a production server (DEBUG off) refuses to start, because a key
    left on disk beside the database would also unlock the Hugging Face tokens encrypted with it.
    A request for help (mistudio.cli) signs nothing: it gets the key as given, checked or not, or none
    (Django refuses an empty key wherever one is used)."""
    explicit = env_str("MISTUDIO_SECRET_KEY")
    if cli.answering_help:
        return explicit
    if explicit:
        if not DEBUG and (len(explicit) < 50 or len(set(explicit)) < 5):
            raise ImproperlyConfigured(
                "MISTUDIO_SECRET_KEY is too weak for a server with MISTUDIO_DEBUG off: use at least 50 characters, "
                "5 of them different, e.g. the output of "
                "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`."
            )
        return explicit
    if not DEBUG:
        raise ImproperlyConfigured(
            "Set MISTUDIO_SECRET_KEY (at least 50 random characters, e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`) to run with MISTUDIO_DEBUG off, "
            "or set MISTUDIO_DEBUG=1 for a development server with a generated key."
        )
    return _kept_secret_key(DATA_DIR / "secret_key")


def _kept_secret_key(key_file, wait_s=5.0):
    """The key kept in `key_file`, made on first use. The file is born with mode 0600 (never written
    and then chmod-ed, which leaves a moment it can be read); O_EXCL makes one process of several
    started together the maker, and the others wait for its key."""
    try:
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        deadline = time.monotonic() + wait_s
        while not (key := key_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not key:
            raise ImproperlyConfigured(f"{key_file} is empty: delete it to have a new key made") from None
        return key
    with os.fdopen(descriptor, "w") as file:
        file.write(secrets.token_urlsafe(50))
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("MISTUDIO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("MISTUDIO_CSRF_TRUSTED_ORIGINS", [])

# HTTPS is on whenever DEBUG is off: secure cookies, a redirect from http and HSTS. Plain HTTP on a
# trusted network (a GPU box reached over an SSH tunnel, say) is an explicit MISTUDIO_HTTPS=0.
HTTPS = env_bool("MISTUDIO_HTTPS", not DEBUG)
SECURE_SSL_REDIRECT = HTTPS
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = env_int("MISTUDIO_HSTS_SECONDS", 365 * 24 * 3600 if HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = env_bool("MISTUDIO_HSTS_PRELOAD", False)
# Only the owner of the registrable domain can submit it to the browsers' preload list
# (hstspreload.org), so preload is an operator's opt-in, not a default worth a deploy warning.
SILENCED_SYSTEM_CHECKS = ["security.W021"]
# Behind a TLS-terminating proxy Django sees plain HTTP; trust the proxy's X-Forwarded-Proto only
# when asked, since a client could send that header itself to a server reached directly.
BEHIND_PROXY = env_bool("MISTUDIO_TRUST_X_FORWARDED_PROTO", False)
if BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (django-csp): scripts and styles from this origin, or inline with the
# page's nonce (`nonce="{{ request.csp_nonce }}"`), never an injected one; no style attributes in
# the markup (bars carry data-share); images from here or data: URIs (Swagger UI's icons); nothing
# may frame the pages, forms post only here.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, NONCE],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "font-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}
SESSION_COOKIE_HTTPONLY = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "corpora",
    "gpus",
    "training",
    "mistudio.apps.MistudioConfig",
    "axes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # The Content-Security-Policy header (CONTENT_SECURITY_POLICY below), with a fresh nonce per page.
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Cache-Control: private, no-store on API answers and downloads.
    "mistudio.middleware.PrivateCacheMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "mistudio.urls"
WSGI_APPLICATION = "mistudio.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


# The embedded default is one SQLite file shared by the web process and the worker: WAL lets
# readers run beside the writer, the busy timeout and IMMEDIATE transactions keep progress writes
# from meeting "database is locked". Several hosts share one PostgreSQL instead.
DATABASES = {"default": database_settings(env_str("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
    }
    # A file, not memory: end-to-end tests start real worker processes that must see it.
    # One per test run (pytest-django deletes it at the end), so two runs in one checkout never clash.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / f"test-db-{os.getpid()}.sqlite3")}
else:
    # Two test runs against one PostgreSQL server never share (nor drop) each other's test database.
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# The static files are public (nginx serves them as another user), so they are collected with
# modes of their own; put them outside the private data folder for a web server to reach them.
STATIC_ROOT = env_path("MISTUDIO_STATIC_ROOT", DATA_DIR / "static")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage",
        "OPTIONS": {"file_permissions_mode": 0o644, "directory_permissions_mode": 0o755},
    },
}
# Django would chmod an uploaded file to 0644 whatever the mask; anything stored is private.
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700

# Uploads: a corpus may be large; Django streams anything over this to a temp file.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
FILE_UPLOAD_HANDLERS = [
    "corpora.uploadhandlers.SizeLimitUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]
# A request body other than an uploaded file (a JSON training request, form fields) is small.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MISTUDIO_REQUEST_MAX_BYTES", 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_NUMBER_FIELDS = 100
CORPUS_MAX_BYTES = env_int("MISTUDIO_CORPUS_MAX_BYTES", 512 * 1024 * 1024, minimum=1)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Knox keeps only a hash of each token: a copy of the database gives no working key.
        "knox.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "mistudio.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
    # Per user (per address for /health): a burst and a sustained rate over every API call, and a
    # stricter rate over the expensive ones; 429 with DRF's detail and Retry-After past any of them.
    # A job page polls its curves every 2 s, so a few open tabs stay far below the burst rate.
    "DEFAULT_THROTTLE_CLASSES": [
        "mistudio.throttles.BurstRateThrottle",
        "mistudio.throttles.SustainedRateThrottle",
        "mistudio.throttles.ExpensiveRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "burst": env_rate("MISTUDIO_THROTTLE_BURST", "120/min"),
        "sustained": env_rate("MISTUDIO_THROTTLE_SUSTAINED", "100000/day"),
        "expensive": env_rate("MISTUDIO_THROTTLE_EXPENSIVE", "30/min"),
    },
    # Whose address an anonymous caller is counted by: the peer's, or behind the trusted proxy the
    # entry it appended to X-Forwarded-For; never an entry the client wrote itself.
    "NUM_PROXIES": 1 if BEHIND_PROXY else 0,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "miStudioTrain",
    "DESCRIPTION": "Train sparse autoencoders on the activations of a language model layer.",
    "VERSION": "1.2.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # A job's hook_point and a sweep's hook_points choose from the same points: one enum.
    "ENUM_NAME_OVERRIDES": {"HookPointEnum": "engine.models.hooks.HOOK_POINTS"},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "mistudio.schema.declare_unauthorized",
        "mistudio.schema.declare_throttled",
    ],
}

# The pages' own login form (any user; the admin's form admits staff only).
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "jobs-page"
LOGOUT_REDIRECT_URL = "login"

# Login throttling (django-axes) on both login forms, the pages' and the admin's: after
# LOGIN_FAILURE_LIMIT wrong passwords for one username from one address, that pair is locked out
# for LOGIN_COOLOFF_MINUTES (429, the lockout page), even with the right password. The pair, not
# the username alone, so that a stranger cannot lock a user out from elsewhere; nor the address
# alone, so that colleagues behind one NAT do not lock each other out. A success clears the count.
AUTHENTICATION_BACKENDS = [
    "mistudio.accounts.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("MISTUDIO_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("MISTUDIO_LOGIN_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
# And a username is locked from every address once this many wrong passwords for it came from all of
# them together within the cool-off (mistudio.accounts.LoginThrottleBackend): many addresses guessing
# one user's password. Higher than the pair's limit, so one stranger cannot lock a user out with a few.
LOGIN_USERNAME_FAILURE_LIMIT = env_int("MISTUDIO_LOGIN_USERNAME_FAILURE_LIMIT", 50, minimum=1)
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# Behind the proxy, every client's address is the proxy's: take the one the proxy appended.
AXES_CLIENT_IP_CALLABLE = "mistudio.accounts.client_ip_behind_proxy" if BEHIND_PROXY else None

TOKEN_TTL_HOURS = env_int("MISTUDIO_TOKEN_TTL_HOURS", 30 * 24, minimum=0)
REST_KNOX = {
    # API tokens stop working 30 days after they were made (0: never); users list and revoke their
    # own (GET /api/v1/tokens, the Tokens page).
    "TOKEN_TTL": timedelta(hours=TOKEN_TTL_HOURS) if TOKEN_TTL_HOURS else None,
    "TOKEN_PREFIX": "mist_",
    "AUTH_HEADER_PREFIX": "Token",
}

# Training.
SERVICE_VERSION = "1.2.0"
HUB_TIMEOUT_S = env_float("MISTUDIO_HUB_TIMEOUT_S", RUN_DEFAULTS.hub_timeout_s, minimum=0.1)
# The largest tokenizer file the web process downloads from the hub (its sizes are asked first).
TOKENIZER_MAX_BYTES = env_int("MISTUDIO_TOKENIZER_MAX_BYTES", 64 << 20, minimum=1 << 20)
# The most a job's model weights may take to download from the hub (the files from_pretrained
# reads at the job's commit, asked of the hub first; those already in the hub cache not counted);
# 0: no limit. 20 GB admits an 8B model in bf16 (~16 GB, Llama-3.1-8B's four shards) with a margin
# for a larger vocabulary; a 13B+ bf16 or an 8B float32 checkpoint is refused unless an operator
# raises it (or puts the model in the models directory).
MODEL_MAX_BYTES = env_int("MISTUDIO_MODEL_MAX_BYTES", RUN_DEFAULTS.model_max_bytes, minimum=0)
# Off: a request without its own Hugging Face token reaches the hub with none, never with the
# login saved on this machine (HF_TOKEN, ~/.cache/huggingface/token): see training.hub.
HUB_USE_SERVER_LOGIN = env_bool("MISTUDIO_HUB_USE_SERVER_LOGIN", False)
PROGRESS_INTERVAL_S = env_float("MISTUDIO_PROGRESS_INTERVAL_S", RUN_DEFAULTS.progress_interval_s, minimum=0.05)
CHECKPOINT_EVERY_EPOCHS = env_int("MISTUDIO_CHECKPOINT_EVERY_EPOCHS", RUN_DEFAULTS.checkpoint_every_epochs, minimum=1)
CHECKPOINT_INTERVAL_S = env_float("MISTUDIO_CHECKPOINT_INTERVAL_S", RUN_DEFAULTS.checkpoint_interval_s, minimum=1.0)
JOB_TIMEOUT_S = env_int("MISTUDIO_JOB_TIMEOUT_S", 48 * 3600, minimum=60)
TRAINING_SEED = env_int("MISTUDIO_SEED", RUN_DEFAULTS.seed)
MIN_SAE_STEPS = env_int("MISTUDIO_MIN_SAE_STEPS", RUN_DEFAULTS.min_steps, minimum=0)
# Activations up to this size are trained from RAM; larger ones stream from their cache on disk.
# TopK decoding: "auto" times a dense matmul against a sparse gather on each job's first batch;
# "dense" or "sparse" pins it (runs then reproduce bit for bit across machines and jobs).
TOPK_DECODE = env_str("MISTUDIO_TOPK_DECODE", RUN_DEFAULTS.decode_path)
if TOPK_DECODE not in ("auto", "dense", "sparse"):
    raise ImproperlyConfigured(f"MISTUDIO_TOPK_DECODE={TOPK_DECODE!r}: use auto, dense or sparse")
# Feature analysis after training: the top activating contexts kept per feature, the tokens shown
# on each side of the peak token, and the promoted/suppressed tokens listed per feature.
FEATURE_TOP_N = env_int("MISTUDIO_FEATURE_TOP_N", RUN_DEFAULTS.feature_top_n, minimum=1)
FEATURE_CONTEXT_WINDOW = env_int("MISTUDIO_FEATURE_CONTEXT_WINDOW", RUN_DEFAULTS.feature_context_window, minimum=0)
FEATURE_LOGIT_TOKENS = env_int("MISTUDIO_FEATURE_LOGIT_TOKENS", RUN_DEFAULTS.feature_logit_tokens, minimum=1)
# The feature analysis after training reads the pass's last this many tokens (a job whose
# activations streamed computes them with the model again, once for the evaluation and the
# analysis); 0 = every token of the pass.
ANALYSIS_TOKENS = env_int("MISTUDIO_ANALYSIS_TOKENS", EVAL_DEFAULTS.analysis_tokens, minimum=0)
# The evaluation after training: the held-out tokens its reconstruction metrics read at most (a
# streamed job computes them with the model again), the held-out tokens its next-token loss and KL
# measure at most, and the most memory the [tokens x vocabulary] logits of those take at once.
EVAL_MAX_TOKENS = env_int("MISTUDIO_EVAL_MAX_TOKENS", EVAL_DEFAULTS.max_rows, minimum=1)
CE_EVAL_TOKENS = env_int("MISTUDIO_CE_EVAL_TOKENS", EVAL_DEFAULTS.ce_max_tokens, minimum=1)
EVAL_LOGITS_BYTES = env_int("MISTUDIO_EVAL_LOGITS_BYTES", EVAL_DEFAULTS.logits_bytes, minimum=1)

# Untrusted input (an uploaded corpus) is read in a child process under these limits
# (mistudio.sandbox): its address space, its CPU time, and the wall-clock time it may take.
SANDBOX_MEMORY_BYTES = env_int("MISTUDIO_SANDBOX_MEMORY_BYTES", 2 << 30, minimum=256 << 20)
SANDBOX_CPU_S = env_int("MISTUDIO_SANDBOX_CPU_S", 120, minimum=1)
SANDBOX_TIMEOUT_S = env_int("MISTUDIO_SANDBOX_TIMEOUT_S", 180, minimum=1)
# A partial upload (corpora) untouched this long belongs to a request that died: removed by the
# next upload and by the workers (at start and by their watchdog).
PARTIAL_UPLOAD_STALE_S = env_int("MISTUDIO_PARTIAL_UPLOAD_STALE_S", 3600, minimum=60)
# The most text an uploaded corpus may decode to, as a multiple of its stored size (16 MiB at
# least): Parquet and Arrow compress and dictionary-encode, so a few hundred bytes can expand to GBs.
CORPUS_MAX_TEXT_RATIO = env_int("MISTUDIO_CORPUS_MAX_TEXT_RATIO", 50, minimum=1)
# Members one sweep may have (layers x hook_points x members): each is a job with its own SAE,
# checkpoints and artifacts, trained one after another by the sweep's one task.
SWEEP_MAX_MEMBERS = env_int("MISTUDIO_SWEEP_MAX_MEMBERS", 64, minimum=1)
# The most disk one job may write (its activation cache and checkpoints), below the data folder's
# free space; unset: the free space. A job that needs more streams its activations (cache_activations
# auto) or is refused with what it would need.
DISK_BUDGET_BYTES = env_int("MISTUDIO_DISK_BUDGET_BYTES", 0, minimum=0) or None
# Per-user quotas (training.admission.quotas, corpora.quotas); staff are exempt, 0 turns one off. Jobs queued
# or running at once, a sweep's members each counted: one more is a 429.
MAX_ACTIVE_JOBS_PER_USER = env_int("MISTUDIO_MAX_ACTIVE_JOBS_PER_USER", 100, minimum=0)
# Slots (GPUs, or the CPU worker's) one user's jobs may train on at once; their other jobs wait in
# the queue (gpus.services.running_limit_reason). A DDP job holds one per GPU, a sweep one for all.
MAX_RUNNING_JOBS_PER_USER = env_int("MISTUDIO_MAX_RUNNING_JOBS_PER_USER", 4, minimum=0)
# Bytes a user's corpora and job artifacts (caches, checkpoints, SAEs, feature analyses) may take on
# disk: an upload past it is a 413, a job whose planned disk goes past it a 400.
STORAGE_QUOTA_BYTES = env_int("MISTUDIO_STORAGE_QUOTA_BYTES", 0, minimum=0)
# An upload is refused (413) before it would leave less than this free on the data folder's disk,
# which also holds the embedded database; staff included.
DISK_RESERVE_BYTES = env_int("MISTUDIO_DISK_RESERVE_BYTES", RUN_DEFAULTS.disk_reserve_bytes, minimum=0)
# Finished jobs' artifacts are deleted this many days after the job ended by
# `manage.py purge_artifacts` (run it from cron); 0: kept until deleted by hand.
RETENTION_DAYS = env_int("MISTUDIO_RETENTION_DAYS", 0, minimum=0)
# CPU precision: "auto" computes in bfloat16 (model weights, SAE matmuls under autocast with float32
# master weights) where the CPU has hardware bf16 matmuls (Intel AMX), float32 elsewhere; "on" or
# "off" pins it. GPUs always compute in bf16 (fp16 where a card lacks it).
CPU_BF16 = env_str("MISTUDIO_CPU_BF16", RUN_DEFAULTS.cpu_bf16)
if CPU_BF16 not in ("auto", "on", "off"):
    raise ImproperlyConfigured(f"MISTUDIO_CPU_BF16={CPU_BF16!r}: use auto, on or off")
ACTIVATIONS_RAM_BUDGET_BYTES = env_int("MISTUDIO_ACTIVATIONS_RAM_BUDGET_BYTES", RUN_DEFAULTS.ram_budget_bytes, minimum=1)
# Training while extracting: a fresh one-process job's first epoch steps on rows as the model
# writes them, drawn through a shuffle buffer of SHUFFLE_BUFFER_TOKENS (later epochs shuffle the
# whole cache); "off" extracts everything first and shuffles it whole. On the 2-core CPU of
# bench/RESULTS.md "on" was 13-18% faster end to end when the cores were not shared; on a GPU the two fill each other's gaps.
OVERLAP_EXTRACTION = env_str("MISTUDIO_OVERLAP_EXTRACTION", "on")
if OVERLAP_EXTRACTION not in ("on", "off"):
    raise ImproperlyConfigured(f"MISTUDIO_OVERLAP_EXTRACTION={OVERLAP_EXTRACTION!r}: use on or off")
SHUFFLE_BUFFER_TOKENS = env_int("MISTUDIO_SHUFFLE_BUFFER_TOKENS", RUN_DEFAULTS.shuffle_buffer_tokens, minimum=2)
# A test hook, never for a real deployment: the phases (as a job's `phase` names them, `training@N`
# for epoch N or later) at which a job's run stops for good, once each per data folder, so a test
# can SIGKILL its worker there however short the phase (tests/system/e2e/test_crash_recovery.py;
# training.worker.reporting.paused_at_phases).
PAUSE_AT_PHASE = env_list("MISTUDIO_PAUSE_AT_PHASE", [])
# A `gpu_ids` job trains as one process per listed GPU (torchrun, DDP). On a machine without a GPU
# such a job is refused, unless this lets it run as that many CPU processes (gloo): tests, trials.
DDP_ON_CPU = env_bool("MISTUDIO_DDP_ON_CPU", False)

# Crash recovery: a running job's worker writes a heartbeat; a job whose worker died (its pid is
# gone on this host, or its heartbeat is older than HEARTBEAT_STALE_S) is re-queued to resume from
# its last checkpoint, at most MAX_JOB_ATTEMPTS runs in all.
HEARTBEAT_INTERVAL_S = env_float("MISTUDIO_HEARTBEAT_INTERVAL_S", 5.0, minimum=0.1)
HEARTBEAT_STALE_S = env_float("MISTUDIO_HEARTBEAT_STALE_S", 120.0, minimum=1.0)

# Workers, one per GPU on any number of hosts (gpus.services). Each registers itself as (host,
# device) and leases that row while it trains, so two workers never train on one GPU.
HOST_NAME = env_str("MISTUDIO_HOST_NAME", socket.gethostname())
# The GPU this worker serves (host numbering), set by `manage.py gpu_worker --gpu N`; empty for a
# worker that serves the default queue (the CPU, or whichever GPU has the most free memory).
WORKER_GPU = env_int("MISTUDIO_WORKER_GPU", None, minimum=0)
# Tests only: a GPU worker that trains on the CPU (no CUDA needed), to exercise leases and routing.
FAKE_GPU = env_bool("MISTUDIO_FAKE_GPU", False)
# A worker records that it is alive this often; one unseen for HEARTBEAT_STALE_S counts as gone.
WORKER_SEEN_INTERVAL_S = env_float("MISTUDIO_WORKER_SEEN_INTERVAL_S", 10.0, minimum=0.1)
# A queued job whose task has waited this long while a worker that could take it sits idle lost
# its task (django-q2 workers buffer tasks; a killed worker takes its buffer along): it is queued
# again. Idle workers look for such jobs (and for running jobs whose worker died) this often.
QUEUE_STALE_S = env_float("MISTUDIO_QUEUE_STALE_S", 60.0, minimum=1.0)
WATCHDOG_INTERVAL_S = env_float("MISTUDIO_WATCHDOG_INTERVAL_S", 30.0, minimum=0.1)
MAX_JOB_ATTEMPTS = env_int("MISTUDIO_MAX_JOB_ATTEMPTS", 3, minimum=1)


def _redis_url(url):
    """A Redis URL, checked now: a typo would otherwise surface as a worker that never sees a job."""
    from redis.connection import parse_url

    try:
        parsed = parse_url(url)
    except ValueError as error:
        raise ImproperlyConfigured(f"REDIS_URL={url!r}: {error}, e.g. redis://HOST:6379/0") from None
    database = urlsplit(url).path.strip("/") if "host" in parsed else ""
    if not (parsed.get("host") or parsed.get("path")) or not (database.isdigit() or database == ""):
        raise ImproperlyConfigured(
            f"REDIS_URL={url!r} must name a host and, optionally, a database number: redis://HOST:6379/0"
        )
    return url


# The queue broker: the ORM broker on the default database unless REDIS_URL names a Redis.
REDIS_URL = _redis_url(env_str("REDIS_URL")) if env_str("REDIS_URL") else ""
# Put before every queue key in Redis, so several sites (or test runs) can share one Redis while
# every queue keeps its name ("mistudio", "mistudio-gpu0", ...). The ORM broker needs none: its
# queues live in the site's own database.
QUEUE_PREFIX = env_str("MISTUDIO_QUEUE_PREFIX")
if QUEUE_PREFIX and not QUEUE_PREFIX.replace("-", "").replace("_", "").isalnum():
    raise ImproperlyConfigured(f"MISTUDIO_QUEUE_PREFIX={QUEUE_PREFIX!r}: use letters, digits, - and _ only")

# Django's cache holds the API's request counts (throttles). With Redis, every web process and host
# counts together; without, each process counts alone (locmem), which still bounds a client.
if REDIS_URL:
    CACHES = {"default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"{QUEUE_PREFIX or 'mistudio'}:cache",
    }}

# One worker per GPU (one on a machine with one GPU or none): a job holds a whole GPU.
# `retry` is longer than `timeout` so a long job is never handed to a second worker while it runs,
# and a failed task is acknowledged and never re-run by the queue (max_attempts=1). Redis has no
# receipts (a task leaves Redis when a worker takes it): a job whose worker dies while training it
# is re-queued from the database by the crash-recovery check, on either broker.
Q_CLUSTER = {
    # Every queue's name starts with this: the GPU queues are "mistudio-gpu<N>".
    "name": "mistudio",
    **({"redis": REDIS_URL, "broker_class": "mistudio.broker.PrefixedRedis"} if REDIS_URL else {"orm": "default"}),
    "workers": env_int("MISTUDIO_WORKERS", 1, minimum=1),
    "timeout": JOB_TIMEOUT_S,
    "retry": JOB_TIMEOUT_S + 3600,
    "max_attempts": 1,
    "ack_failures": True,
    # A fresh worker process per job: GPU memory and model weights never leak into the next job.
    "recycle": 1,
    "poll": env_float("MISTUDIO_QUEUE_POLL_S", 1.0, minimum=0.05),
    "catch_up": False,
    "save_limit": 1000,
    "label": "Task queue",
    "sync": env_bool("MISTUDIO_QUEUE_SYNC", False),
    # Per-GPU queues share this configuration: `manage.py gpu_worker --gpu N` starts a cluster named
    # mistudio-gpuN (Q_CLUSTER_NAME), and jobs are routed to it with async_task(cluster=...).
    "ALT_CLUSTERS": {},
}

# Everything goes to stderr (the service manager's journal, gunicorn's error log), every secret
# masked first (mistudio.logs). Django's own default only mails request errors to ADMINS with DEBUG
# off, and none are set: here a server error is logged with its path and traceback.
LOG_LEVEL = env_str("MISTUDIO_LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"scrub_secrets": {"()": "mistudio.logs.ScrubSecrets"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["scrub_secrets"]}},
    "loggers": {
        "mistudio": {"handlers": ["console"], "level": LOG_LEVEL},
        "training": {"handlers": ["console"], "level": LOG_LEVEL},
        # 5xx with the path and traceback always; 4xx too on a development server.
        "django.request": {"handlers": ["console"], "level": "WARNING" if DEBUG else "ERROR", "propagate": False},
        # A refused Host header, a suspicious operation: worth a line on any server.
        "django.security": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
