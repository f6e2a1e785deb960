"""GET /health answers everyone, but an anonymous caller gets only the seed's document (service,
status, version, GPU count and memory): no worker host names, pids or queues. Signed-in callers,
staff first, get the workers as /gpu/status shows them."""
import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from gpus.models import Worker

pytestmark = pytest.mark.django_db

SEED_KEYS = {"service", "status", "version", "gpu_available", "gpu_count", "memory_status"}


@pytest.fixture
def worker():
    now = timezone.now()
    return Worker.objects.create(host="gpu-box-7.internal", device="gpu0", gpu_index=0, queue="mistudio-gpu0",
                                 pid=424242, started_at=now, last_seen_at=now)


def test_an_anonymous_caller_sees_only_what_the_seed_shows(worker):
    response = APIClient().get("/health")
    assert response.status_code == 200
    assert set(response.json()) == SEED_KEYS
    text = response.content.decode()
    assert "gpu-box-7" not in text and "424242" not in text and "mistudio-gpu0" not in text


def test_a_bad_token_is_only_anonymous_there(worker):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    response = client.get("/health")
    assert response.status_code == 200 and set(response.json()) == SEED_KEYS


def test_staff_see_the_workers_with_their_hosts_pids_and_queues(worker, charlie_api):
    body = charlie_api.get("/health").json()
    assert SEED_KEYS < set(body) and "nvml_error" in body
    [seen] = body["workers"]
    assert (seen["host"], seen["pid"], seen["queue"], seen["alive"]) == ("gpu-box-7.internal", 424242, "mistudio-gpu0", True)


def test_a_signed_in_user_sees_the_workers_as_gpu_status_shows_them(worker, alice_api, client, alice):
    assert alice_api.get("/health").json()["workers"] == alice_api.get("/gpu/status").json()["workers"]
    client.force_login(alice)  # a session works as a token does
    assert client.get("/health").json()["workers"][0]["host"] == "gpu-box-7.internal"
