"""MISTUDIO_TOPK_DECODE=sparse pins TopK's gather and leaves an architecture without a fixed k per
token (batchtopk) to decode densely, instead of failing its job after the extraction."""
import pytest

from engine.trainer.config import check_config
from training.worker.reporting import train_config
from training.models import TrainingJob

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("setting, architecture, path", [
    ("sparse", "topk", "sparse"), ("sparse", "batchtopk", "dense"), ("sparse", "relu", "dense"),
    ("auto", "batchtopk", "auto"), ("dense", "topk", "dense"),
])
def test_the_decode_setting_applies_where_the_architecture_can_take_it(settings, alice, setting, architecture, path):
    settings.TOPK_DECODE = setting
    job = TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2", architecture=architecture, k=8)
    config = train_config(job)
    assert config.decode_path == path
    check_config(config)  # the trainer takes it (it raises on a decode path the architecture cannot use)
