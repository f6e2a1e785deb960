import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

PROTECTED = [
    ("get", "/gpu/status"),
    ("post", "/api/v1/train"),
    ("get", "/api/v1/train/train_x/status"),
    ("get", "/api/v1/train/train_x/result"),
    ("post", "/api/v1/train/train_x/cancel"),
    ("get", "/api/v1/train/train_x/download"),
    ("get", "/api/v1/jobs"),
    ("post", "/api/v1/sweeps"),
    ("get", "/api/v1/sweeps"),
    ("get", "/api/v1/sweeps/sweep_x"),
    ("post", "/api/v1/sweeps/sweep_x/cancel"),
    ("get", "/api/v1/check-memory/tiny/gpt2"),
    ("post", "/api/v1/validate-model"),
    ("post", "/api/v1/upload"),
    ("get", "/api/schema/"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("method,url", PROTECTED)
def test_every_endpoint_but_health_needs_a_login(method, url):
    response = getattr(APIClient(), method)(url)
    assert response.status_code == 401
    assert "credentials were not provided" in response.content.decode().lower()


@pytest.mark.django_db
def test_health_is_open():
    assert APIClient().get("/health").status_code == 200


@pytest.mark.django_db
def test_issue_token_creates_the_user_and_prints_a_working_token(capsys, django_user_model):
    call_command("issue_token", "dana")
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert django_user_model.objects.filter(username="dana").exists()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/v1/jobs").status_code == 200
    client.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert client.get("/api/v1/jobs").status_code == 401


@pytest.mark.django_db
def test_a_session_login_works_too(client, alice):
    client.force_login(alice)
    assert client.get("/api/v1/jobs").status_code == 200
