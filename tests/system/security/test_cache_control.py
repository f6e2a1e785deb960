"""API answers and downloads are a user's own: `Cache-Control: private, no-store` on each, so no
shared cache keeps them and no browser stores them; the anonymous /health and the pages are left
as they were."""
import pytest


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/train/train_missing/download", "/api/v1/train/x/status",
                                  "/gpu/status", "/api/schema/"])
def test_api_answers_are_private_and_not_stored(alice_api, path):
    response = alice_api.get(path)
    assert response["Cache-Control"] == "private, no-store", (path, response.status_code)


@pytest.mark.django_db
def test_a_download_is_private_and_not_stored(tmp_path):
    from django.http import FileResponse
    from django.test import RequestFactory

    from mistudio.middleware import PrivateCacheMiddleware

    path = tmp_path / "sae.pt"
    path.write_bytes(b"weights")
    answered = PrivateCacheMiddleware(lambda request: FileResponse(open(path, "rb")))(RequestFactory().get("/jobs/x/"))
    assert answered["Cache-Control"] == "private, no-store"
    answered.close()


@pytest.mark.django_db
def test_health_is_not_marked_private(client):
    assert "no-store" not in client.get("/health").get("Cache-Control", "")
