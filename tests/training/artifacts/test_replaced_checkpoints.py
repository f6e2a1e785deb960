"""A streamed run keeps its latest mid-epoch checkpoint only (engine.trainer.checkpoint.Writer):
the job's rows follow, so its checkpoints listed are the files on disk and a resume takes the newest."""
import pytest

from engine.results import CheckpointInfo
from training import services
from training.worker.reporting import resume_checkpoint, train_callbacks
from training.models import TrainingJob

pytestmark = pytest.mark.django_db


def test_a_checkpoint_that_replaces_an_earlier_one_takes_its_row(alice, tmp_path):
    job = services.job_claim(TrainingJob.objects.create(owner=alice, model_name="tiny/gpt2").pk)
    _, on_checkpoint = train_callbacks(job, lambda event: None)
    earlier, later = tmp_path / "sae_checkpoint_0_step_4.pt", tmp_path / "sae_checkpoint_0_step_8.pt"
    earlier.write_bytes(b"4")
    on_checkpoint(CheckpointInfo(path=earlier, epoch=0, step=4))
    later.write_bytes(b"8")
    on_checkpoint(CheckpointInfo(path=later, epoch=0, step=8, replaced=earlier))
    assert [c.path for c in job.checkpoints.all()] == [str(later)]
    assert resume_checkpoint(job) == later
