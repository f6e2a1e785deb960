"""A training request's defaults are written once (training.defaults, the SAE's from engine.defaults):
the engine's TrainConfig, JobRequest, the TrainingJob fields, the API serializer, its OpenAPI schema
and `manage.py train` all say the same, and it is the seed's contract. Changing one place alone
fails here."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from drf_spectacular.generators import SchemaGenerator

from engine.defaults import ReadingDefaults, SaeDefaults
from engine.run import RunPaths, RunSpec
from engine.trainer import TrainConfig
from engine import sae as architectures
from engine.models.hooks import HOOK_POINTS
from training.defaults import DEFAULTS, JobDefaults
from training.management.commands.train import TrainOptions
from training.models import TrainingJob
from training.api.serializers import CheckMemoryQuerySerializer, TrainRequestSerializer
from training.requests import JobRequest

# /work/shared/seed/miStudioTrain-API.md, TrainingRequest, and miStudio's additions.
SEED = {"layer_number": 12, "hidden_dim": 1024, "sparsity_coeff": 0.001, "learning_rate": 0.0001,
        "batch_size": 16, "max_epochs": 50, "min_loss": 0.01, "max_sequence_length": 512}
MISTUDIO = {"sae_batch_tokens": 4096, "quantization": "none", "architecture": "relu", "k": None, "target_l0": None,
            "hook_point": "resid_post", "exclude_special_tokens": True, "prepend_bos": True,
            "packing": None, "training_tokens": None, "cache_activations": "auto"}
FIELDS = [field.name for field in dataclasses.fields(JobDefaults)]


@pytest.fixture(scope="module")
def schema_defaults():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    properties = schema["components"]["schemas"]["TrainRequestRequest"]["properties"]
    return {name: field.get("default") for name, field in properties.items()}


def test_the_defaults_are_the_seed_contract():
    assert dataclasses.asdict(DEFAULTS) == {**SEED, **MISTUDIO}


def test_the_engine_trains_with_the_sae_defaults():
    engine = {field.name: field.default for field in dataclasses.fields(TrainConfig)}
    sae = {field.name: field.default for field in dataclasses.fields(SaeDefaults)}
    assert {name: engine[name] for name in sae} == sae


@pytest.mark.parametrize("name", FIELDS)
def test_every_place_that_states_a_default_states_the_same_one(name, schema_defaults):
    places = {
        "JobRequest": JobRequest.__dataclass_fields__[name].default,
        "TrainingJob": TrainingJob._meta.get_field(name).get_default(),
        "TrainRequestSerializer": TrainRequestSerializer().fields[name].default,
        "OpenAPI schema": schema_defaults[name],
        "manage.py train": TrainOptions().fields[name].default,
    }
    if name in TrainConfig.__dataclass_fields__:
        places["TrainConfig"] = TrainConfig.__dataclass_fields__[name].default
    if name in ReadingDefaults.__dataclass_fields__:  # what a notebook's run gets too
        places["RunSpec"] = RunSpec.__dataclass_fields__[name].default
    assert places == dict.fromkeys(places, getattr(DEFAULTS, name))


def test_the_memory_check_estimates_for_the_same_defaults():
    fields = CheckMemoryQuerySerializer().fields
    names = ["batch_size", "hidden_dim", "max_sequence_length", "sae_batch_tokens", "quantization"]
    assert {name: fields[name].default for name in names} == {name: getattr(DEFAULTS, name) for name in names}


def test_the_default_choices_are_valid_choices():
    assert DEFAULTS.quantization in TrainingJob.Quantization.values
    assert DEFAULTS.architecture in architectures.names()
    assert DEFAULTS.hook_point in HOOK_POINTS


# The service's settings that reach a run (training.worker.reporting.train_config, training.worker.spec.job_spec),
# by the engine's name for each.
TRAIN_CONFIG_SETTINGS = {
    "seed": "TRAINING_SEED", "min_steps": "MIN_SAE_STEPS", "ram_budget_bytes": "ACTIVATIONS_RAM_BUDGET_BYTES",
    "shuffle_buffer_tokens": "SHUFFLE_BUFFER_TOKENS", "decode_path": "TOPK_DECODE",
    "checkpoint_every_epochs": "CHECKPOINT_EVERY_EPOCHS", "checkpoint_interval_s": "CHECKPOINT_INTERVAL_S",
    "progress_interval_s": "PROGRESS_INTERVAL_S", "cpu_bf16": "CPU_BF16",
}
RUN_SPEC_SETTINGS = {
    "hub_limits.timeout_s": "HUB_TIMEOUT_S", "hub_limits.max_bytes": "MODEL_MAX_BYTES",
    "hub_limits.reserve_bytes": "DISK_RESERVE_BYTES", "disk_budget_bytes": "DISK_BUDGET_BYTES",
    "features.top_n": "FEATURE_TOP_N", "features.window": "FEATURE_CONTEXT_WINDOW",
    "features.logit_tokens": "FEATURE_LOGIT_TOKENS", "features.max_tokens": "ANALYSIS_TOKENS",
    "evaluation.max_rows": "EVAL_MAX_TOKENS", "evaluation.ce_max_tokens": "CE_EVAL_TOKENS",
    "evaluation.logits_bytes": "EVAL_LOGITS_BYTES", "cpu_bf16": "CPU_BF16",
}


@pytest.fixture(scope="module")
def service_settings(tmp_path_factory):
    """The settings a server has with no MISTUDIO_ variable but its key: what an operator gets unless
    they change something (a real process: this suite's own settings are changed by pytest.ini)."""
    names = sorted({*TRAIN_CONFIG_SETTINGS.values(), *RUN_SPEC_SETTINGS.values()})
    env = {name: value for name, value in os.environ.items() if not name.startswith("MISTUDIO_")}
    env.update(MISTUDIO_SECRET_KEY="k8Jq2vX9rT4mW7pL1sN6bY3cF0hD5gZ8aE2uI7oQ4wR9tY1xC6vB3nM0lK5jH8gF",
               MISTUDIO_DATA_DIR=str(tmp_path_factory.mktemp("service") / "data"))
    code = f"import json; from django.conf import settings as s; print(json.dumps({{n: getattr(s, n) for n in {names!r}}}))"
    done = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=Path(__file__).resolve().parents[2],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRAIN_CONFIG_SETTINGS))
def test_a_train_config_defaults_to_what_the_service_passes(name, service_settings):
    assert getattr(TrainConfig(), name) == service_settings[TRAIN_CONFIG_SETTINGS[name]]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUN_SPEC_SETTINGS))
def test_a_run_spec_defaults_to_what_the_service_passes(name, service_settings, tmp_path):
    value = RunSpec(paths=RunPaths.in_folder(tmp_path))
    for part in name.split("."):
        value = getattr(value, part)
    assert value == service_settings[RUN_SPEC_SETTINGS[name]]


def test_a_run_spec_without_a_config_trains_with_the_train_config_defaults(tmp_path):
    assert RunSpec(paths=RunPaths.in_folder(tmp_path)).config == TrainConfig()
