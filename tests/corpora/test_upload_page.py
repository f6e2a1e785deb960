"""The New job page's upload form (/corpora/upload/): a logged-in user's file stored through
corpus_add as the API stores it, then back to the form with the new corpus chosen; a refusal comes
back as the service's message; CSRF-protected, login required, and `next` stays on this site."""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from corpora.models import Corpus
from tests.model_fixtures import SAMPLE_CORPUS

pytestmark = pytest.mark.django_db

URL = "/corpora/upload/?next=/jobs/new/"


def test_an_upload_is_stored_as_the_users_and_the_form_comes_back_with_it_chosen(alice_browser, alice):
    response = alice_browser.post(URL, {"file": SimpleUploadedFile("reviews.txt", SAMPLE_CORPUS.read_bytes())})
    assert response.status_code == 302 and response["Location"] == "/jobs/new/?corpus_file=reviews.txt"
    corpus = Corpus.objects.get()
    assert (corpus.owner, corpus.name, corpus.format) == (alice, "reviews.txt", "txt")
    assert open(corpus.path, "rb").read() == SAMPLE_CORPUS.read_bytes()

    page = alice_browser.get(response["Location"])
    [corpus_row] = [row for _, rows in page.context["sections"] for row in rows if row.name == "corpus_file"]
    assert corpus_row.value == "reviews.txt" and "reviews.txt" in dict(corpus_row.choices)
    html = page.content.decode()
    assert f"Uploaded reviews.txt: {corpus.documents_count:,} documents (txt)." in html
    assert '<option value="reviews.txt" selected>' in html


def test_a_dataset_takes_its_text_column(alice_browser):
    rows = b'{"body": "One document."}\n{"body": "Another one."}\n'
    response = alice_browser.post(URL, {"file": SimpleUploadedFile("docs.jsonl", rows), "text_field": "body"})
    assert response.status_code == 302
    corpus = Corpus.objects.get()
    assert (corpus.format, corpus.text_field, corpus.documents_count) == ("jsonl", "body", 2)


def test_a_refused_file_comes_back_with_the_services_message_and_nothing_is_stored(alice_browser):
    response = alice_browser.post(URL, {"file": SimpleUploadedFile("blob.txt", b"\x00\x01binary")}, follow=True)
    assert response.redirect_chain == [("/jobs/new/", 302)]
    assert "&#x27;blob.txt&#x27; looks binary (it contains NUL bytes): upload a UTF-8 text file." in response.content.decode()
    assert not Corpus.objects.exists()


def test_a_name_with_folders_is_refused_as_the_api_refuses_it(alice_browser):
    # Django's test client strips folders from file names, so the body is written by hand.
    body = ('--B\r\nContent-Disposition: form-data; name="file"; filename="../../etc/passwd"\r\n'
            "Content-Type: text/plain\r\n\r\nhello\n\r\n--B--\r\n").encode()
    response = alice_browser.generic("POST", URL, body, content_type="multipart/form-data; boundary=B")
    assert response.status_code == 302 and response["Location"] == "/jobs/new/"
    assert "not allowed" in alice_browser.get("/jobs/new/").content.decode()
    assert not Corpus.objects.exists()


def test_nothing_chosen_says_to_choose_a_file(alice_browser):
    response = alice_browser.post(URL, {"text_field": "text"}, follow=True)
    assert "Choose a corpus file to upload." in response.content.decode()


def test_it_needs_the_csrf_token_and_a_login(alice):
    client = Client(enforce_csrf_checks=True)
    assert client.post(URL, {"file": SimpleUploadedFile("a.txt", b"hello\n")})["Location"].startswith("/accounts/login/")
    client.force_login(alice)
    assert client.post(URL, {"file": SimpleUploadedFile("a.txt", b"hello\n")}).status_code == 403
    assert not Corpus.objects.exists()
    assert client.get(URL).status_code == 405


def test_next_never_leaves_the_site(alice_browser):
    response = alice_browser.post("/corpora/upload/?next=https://evil.example/", {"file": SimpleUploadedFile("a.txt", b"hi\n")})
    assert response["Location"] == "/?corpus_file=a.txt"
