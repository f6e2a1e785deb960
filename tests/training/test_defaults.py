"""A training request's defaults are written once (training.defaults, the SAE's from engine.defaults):
the engine's TrainConfig, JobRequest, the TrainingJob fields, the API serializer, its OpenAPI schema
and `manage.py train` all say the same, and it is the seed's contract. Changing one place alone
fails here."""
import dataclasses

import pytest
from drf_spectacular.generators import SchemaGenerator

from engine.defaults import SaeDefaults
from engine.run import RunSpec
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
    if name in ("hook_point", "exclude_special_tokens", "prepend_bos", "packing", "training_tokens",
                "cache_activations"):  # what a notebook's run gets too
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
