import pytest
from django.core.management import call_command


def test_the_schema_validates_without_warnings(tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"))
    schema = (tmp_path / "schema.yml").read_text()
    for path in ("/api/v1/train:", "/api/v1/train/{job_id}/cancel:", "/api/v1/upload:", "/gpu/status:"):
        assert path in schema


@pytest.mark.django_db
def test_swagger_ui_is_served_without_a_cdn(client, alice):
    client.force_login(alice)
    page = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in page
    assert "cdn" not in page.lower()
