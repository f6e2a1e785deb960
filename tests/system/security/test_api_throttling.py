"""Each user's API calls are rate-limited: a burst and a sustained rate over every call, a stricter
rate over the expensive ones (a job or a sweep made, a model checked, a corpus uploaded); past one,
429 with a `detail` and Retry-After. The suite's rates are out of reach (pytest.ini); these tests
lower them, on a cache of their own."""
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.django_db


@pytest.fixture
def rates(settings):
    """set(burst=..., sustained=..., expensive=...): those rates, counted from zero."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": f"throttle-test-{uuid.uuid4().hex}"}}

    def set_rates(burst="1000/min", sustained="1000/day", expensive="1000/min"):
        settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {
            "burst": burst, "sustained": sustained, "expensive": expensive}}

    return set_rates


def test_a_user_past_the_burst_rate_gets_429_and_when_to_retry_while_others_go_on(rates, alice_api, bob_api):
    rates(burst="3/min")
    assert [alice_api.get("/api/v1/jobs").status_code for _ in range(3)] == [200, 200, 200]
    refused = alice_api.get("/api/v1/jobs")
    assert refused.status_code == 429
    assert refused.json()["detail"].startswith("Request was throttled. Expected available in")
    assert 0 < int(refused["Retry-After"]) <= 60
    assert bob_api.get("/api/v1/jobs").status_code == 200  # per user, not per server


def test_the_sustained_rate_holds_over_a_long_period(rates, alice_api):
    rates(burst="100/min", sustained="4/day")
    assert [alice_api.get("/api/v1/jobs").status_code for _ in range(4)] == [200] * 4
    refused = alice_api.get("/api/v1/jobs")
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 3600


def test_the_expensive_calls_share_a_stricter_rate_and_leave_the_rest_alone(rates, alice_api):
    rates(burst="100/min", expensive="4/min")
    # Bad requests count too: the limit protects the server before it reads a body.
    assert alice_api.post("/api/v1/validate-model", {}, format="json").status_code == 400
    assert alice_api.post("/api/v1/train", {}, format="json").status_code == 400
    assert alice_api.post("/api/v1/sweeps", {}, format="json").status_code == 400
    assert alice_api.post("/api/v1/upload", {}, format="multipart").status_code == 400
    for refused in (alice_api.get("/api/v1/check-memory/tiny/gpt2"),
                    alice_api.post("/api/v1/upload", {}, format="multipart"),
                    alice_api.post("/api/v1/train", {}, format="json")):
        assert refused.status_code == 429, refused.content
        assert "throttled" in refused.json()["detail"]
    assert alice_api.get("/api/v1/jobs").status_code == 200
    assert alice_api.get("/api/v1/sweeps").status_code == 200  # listing sweeps is cheap


def test_anonymous_health_checks_are_limited_per_address(rates, client):
    rates(burst="2/min")
    assert [client.get("/health").status_code for _ in range(2)] == [200, 200]
    assert client.get("/health").status_code == 429
    assert client.get("/health", REMOTE_ADDR="192.0.2.7").status_code == 200


def test_a_client_written_x_forwarded_for_does_not_escape_the_limit(rates, client):
    rates(burst="2/min")
    spoofed = [client.get("/health", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}").status_code for i in range(3)]
    assert spoofed == [200, 200, 429]


@pytest.mark.slow
def test_behind_the_trusted_proxy_the_address_it_appended_counts(tmp_path):
    code = "from rest_framework.settings import api_settings; print(api_settings.NUM_PROXIES)"
    assert manage_shell(code, MISTUDIO_DATA_DIR=str(tmp_path / "own")).stdout.split("\n")[-2] == "0"
    behind = manage_shell(code, MISTUDIO_DATA_DIR=str(tmp_path / "own"), MISTUDIO_TRUST_X_FORWARDED_PROTO="1")
    assert behind.stdout.split("\n")[-2] == "1", behind.stderr


def manage_shell(code, **env):
    base = {name: value for name, value in os.environ.items() if not name.startswith(("MISTUDIO_THROTTLE", "REDIS_URL"))}
    return subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_rates_come_from_the_environment_and_a_bad_one_stops_start_up(tmp_path):
    code = "from django.conf import settings; print(sorted(settings.REST_FRAMEWORK['DEFAULT_THROTTLE_RATES'].items()))"
    done = manage_shell(code, MISTUDIO_DATA_DIR=str(tmp_path / "own"))
    assert done.stdout.split("\n")[-2] == "[('burst', '120/min'), ('expensive', '30/min'), ('sustained', '100000/day')]"
    done = manage_shell(code, MISTUDIO_DATA_DIR=str(tmp_path / "own"), MISTUDIO_THROTTLE_BURST="lots")
    assert done.returncode != 0
    assert "MISTUDIO_THROTTLE_BURST='lots' is not a rate" in done.stderr and "e.g. 60/min" in done.stderr


@pytest.mark.slow
def test_with_redis_every_web_process_counts_in_one_cache(tmp_path):
    code = "from django.conf import settings; c = settings.CACHES['default']; print(c['BACKEND'], c['LOCATION'], c['KEY_PREFIX'])"
    done = manage_shell(code, MISTUDIO_DATA_DIR=str(tmp_path / "own"), REDIS_URL="redis://127.0.0.1:6399/3",
                        MISTUDIO_QUEUE_PREFIX="site-a")
    assert done.stdout.split("\n")[-2] == "django.core.cache.backends.redis.RedisCache redis://127.0.0.1:6399/3 site-a:cache"


def test_the_pages_forms_count_against_the_same_rates_as_the_api(rates, client, alice, alice_api):
    rates(burst="100/min", expensive="3/min")
    client.force_login(alice)
    assert alice_api.post("/api/v1/validate-model", {}, format="json").status_code == 400
    assert client.post("/jobs/new/", {}).status_code == 400  # the form again, with its errors
    assert client.get("/jobs/new/").status_code == 200  # looking at a form costs nothing
    assert client.post("/sweeps/new/", {}).status_code == 400
    for url in ("/jobs/new/", "/sweeps/new/", "/corpora/upload/?next=/jobs/new/"):
        refused = client.post(url, {})
        assert refused.status_code == 429, url
        assert 0 < int(refused["Retry-After"]) <= 60
        assert "Too many requests" in refused.content.decode()
    assert alice_api.post("/api/v1/train", {}, format="json").status_code == 429
