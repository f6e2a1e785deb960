"""A sweep shares one cache per (layer, hook point) among its members; a transcoder needs the MLP's
input and output cached together, so a sweep of one is refused with a 400 that says what to do."""
import pytest

from tests.training.api.test_sweep_requests import body, corpus  # noqa: F401 (a fixture)
from training.models import Sweep, TrainingJob

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("fields, says", [
    ({"architecture": "transcoder"}, "architecture: a sweep cannot train a transcoder yet"),
    ({"members": [{}, {"architecture": "skip_transcoder"}]}, "members[1].architecture: a sweep cannot train a skip_transcoder"),
])
@pytest.mark.slow
def test_a_sweep_of_transcoders_is_refused_and_says_to_train_them_alone(alice_api, hub_models, corpus, fields, says):  # noqa: F811
    response = alice_api.post("/api/v1/sweeps", body(**fields), format="json")
    assert response.status_code == 400 and says in response.json()["detail"], response.json()
    assert "POST /api/v1/train" in response.json()["detail"]
    assert not Sweep.objects.exists() and not TrainingJob.objects.exists()
