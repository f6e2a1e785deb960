"""The admin's corpus upload takes the API's formats and text field, and shows format and documents."""
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from corpora.models import Corpus

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, charlie):
    client.force_login(charlie)
    return client


def _parquet():
    sink = io.BytesIO()
    pq.write_table(pa.table({"id": [1, 2], "body": ["first review", "second review"]}), sink)
    return sink.getvalue()


@pytest.mark.slow
def test_staff_upload_a_parquet_corpus_with_its_text_field(staff_client, charlie):
    response = staff_client.post("/admin/corpora/corpus/add/", {
        "file": SimpleUploadedFile("reviews.parquet", _parquet()), "text_field": "body"}, follow=True)
    assert response.status_code == 200
    corpus = Corpus.objects.get()
    assert (corpus.owner, corpus.format, corpus.text_field, corpus.documents_count) == (charlie, "parquet", "body", 2)
    listing = staff_client.get("/admin/corpora/corpus/").content.decode()
    assert "parquet" in listing and "reviews.parquet" in listing


def test_the_admin_upload_shows_the_engines_message_for_a_missing_column(staff_client):
    response = staff_client.post("/admin/corpora/corpus/add/", {
        "file": SimpleUploadedFile("reviews.parquet", _parquet())})
    assert "send text_field=body" in response.content.decode()
    assert not Corpus.objects.exists()


def test_the_add_form_offers_the_text_field(staff_client):
    page = staff_client.get("/admin/corpora/corpus/add/").content.decode()
    assert 'name="text_field"' in page and 'value="text"' in page
