"""The New job page (/jobs/new/) through Django's test client: the seed's defaults and the user's
own corpora on GET; a job made by the path POST /api/v1/train takes (the same job as the API makes
from the same fields); refusals shown next to the field they are about, with what was sent kept;
and "Check memory", which shows the API's check-memory verdict and makes no job."""
import html as html_entities
import re

import pytest
from django.test import Client

from corpora.services import corpus_add
from engine import sae as architectures
from engine.models.resolve import BUNDLED_CAUSAL_LM_NAME, BUNDLED_MODEL_NAME
from tests.django_fixtures import queued_tasks
from tests.model_fixtures import SAMPLE_CORPUS
from training.defaults import DEFAULTS
from training.models import TrainingJob

pytestmark = pytest.mark.django_db

URL = "/jobs/new/"
# A small job on the tiny GPT-2 (3 layers) and alice's corpus.
FIELDS = {"model_name": "tiny/gpt2", "corpus_file": "reviews.txt", "layer_number": "1", "hidden_dim": "16",
          "max_epochs": "2", "max_sequence_length": "32", "exclude_special_tokens": "true", "prepend_bos": "true"}


@pytest.fixture
def alices_corpus(alice):
    return corpus_add(owner=alice, name="reviews.txt", chunks=[SAMPLE_CORPUS.read_bytes()])


@pytest.fixture
def bobs_corpus(bob):
    return corpus_add(owner=bob, name="bobs-notes.txt", chunks=[b"Bob's own words.\nNot for alice.\n"])


def rows(response):
    return {row.name: row for _, section in response.context["sections"] for row in section}


def row_html(response, name):
    """The HTML of one field's row, entities decoded: what a person sees next to that field."""
    html = response.content.decode()
    start = html.index('<div class="form-row')
    match = re.search(rf'<div class="form-row[^"]*" id="row-{name}">(.*?)\n</div>', html[start:], re.S)
    assert match, f"no row for {name}"
    return html_entities.unescape(match.group(1))


def test_anonymous_visitors_are_sent_to_the_login_page(client):
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/jobs/new/")
    assert client.post(URL, FIELDS).status_code == 302
    assert not TrainingJob.objects.exists()


def test_the_jobs_list_and_the_nav_link_to_the_form(alice_browser):
    html = alice_browser.get("/jobs/").content.decode()
    assert '<a href="/jobs/new/" id="new-job">' in html and '<a href="/jobs/new/" id="nav-new-job">' in html


@pytest.mark.slow
def test_it_shows_the_seed_defaults_the_bundled_models_and_only_the_users_corpora(
        alice_browser, alices_corpus, bobs_corpus, hub_models):
    response = alice_browser.get(URL)
    assert response.status_code == 200
    shown = rows(response)
    for name in ("layer_number", "hidden_dim", "sparsity_coeff", "learning_rate", "batch_size", "max_epochs",
                 "min_loss", "max_sequence_length", "sae_batch_tokens", "quantization", "architecture",
                 "hook_point", "cache_activations"):
        assert shown[name].value == str(getattr(DEFAULTS, name)), name
    for name in ("k", "target_l0", "packing", "training_tokens", "gpu_id"):
        assert shown[name].value == "" and getattr(DEFAULTS, name, None) is None, name
    assert shown["exclude_special_tokens"].checked is DEFAULTS.exclude_special_tokens is True
    assert [value for value, _ in shown["architecture"].choices] == list(architectures.names())
    assert shown["model_name"].suggestions[:2] == [BUNDLED_CAUSAL_LM_NAME, BUNDLED_MODEL_NAME]
    assert {"tiny/gpt2", "tiny/llama"} <= set(shown["model_name"].suggestions)  # the models folder's
    assert [value for value, _ in shown["corpus_file"].choices] == ["", "reviews.txt"]
    html = response.content.decode()
    assert 'name="csrfmiddlewaretoken"' in html
    assert '<input type="number" id="id_layer_number" name="layer_number" value="12"' in html
    assert '<option value="tiny/gpt2">' in html
    assert "bobs-notes.txt" not in html
    assert 'id="no-corpora"' not in html


def test_a_user_without_corpora_is_told_where_to_upload_one(alice_browser):
    html = alice_browser.get(URL).content.decode()
    assert 'id="no-corpora"' in html and "POST /api/v1/upload" in html


def test_a_valid_form_makes_the_job_the_api_makes_from_the_same_fields_and_goes_to_its_page(
        alice_browser, alice_api, alices_corpus, hub_models, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_browser.post(URL, {**FIELDS, "csrfmiddlewaretoken": "unchecked-by-the-test-client"})
    [job] = TrainingJob.objects.all()
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.id}/"
    assert job.owner.username == "alice" and job.corpus == alices_corpus
    assert (job.model_name, job.layer_number, job.hidden_dim, job.max_epochs, job.max_sequence_length) == (
        "tiny/gpt2", 1, 16, 2, 32)
    assert job.status == TrainingJob.Status.QUEUED and job.memory_check == "passed" and job.disk_plan
    assert [task["args"] for task in queued_tasks()] == [(job.id,)]  # queued, as the API queues it

    # The same fields, form-encoded, to the API: the same job but for its id and times.
    assert alice_api.post("/api/v1/train", FIELDS).status_code == 200
    from_api = TrainingJob.objects.exclude(pk=job.pk).get()
    differ = {"id", "created_at", "updated_at", "enqueued_at"}
    columns = [f.attname for f in TrainingJob._meta.concrete_fields if f.attname not in differ | {"encrypted_hf_token"}]
    for made in (job, from_api):
        made.disk_plan.pop("free_bytes")  # the disk's free space, read at each submission
    assert {c: getattr(from_api, c) for c in columns} == {c: getattr(job, c) for c in columns}


def test_a_layer_beyond_the_model_is_shown_by_layer_number_with_the_values_kept(alice_browser, alices_corpus, hub_models):
    response = alice_browser.post(URL, {**FIELDS, "layer_number": "5", "huggingface_token": "hf_secret_sentinel"})
    assert response.status_code == 400
    message = "layer_number 5 is out of range: tiny/gpt2 has 3 layers, so choose 0 to 2."
    assert rows(response)["layer_number"].errors == [message]
    assert message in row_html(response, "layer_number")
    assert message not in row_html(response, "hidden_dim")
    assert response.context["top_errors"] == []
    shown = rows(response)
    assert (shown["model_name"].value, shown["layer_number"].value, shown["hidden_dim"].value) == ("tiny/gpt2", "5", "16")
    assert [v for v, _ in shown["corpus_file"].choices if v == shown["corpus_file"].value] == ["reviews.txt"]
    assert "hf_secret_sentinel" not in response.content.decode()  # a token is never sent back
    assert not TrainingJob.objects.exists()


def test_the_serializers_errors_land_by_their_fields(alice_browser, alices_corpus, hub_models):
    response = alice_browser.post(URL, {**FIELDS, "batch_size": "0", "learning_rate": "fast", "model_name": ""})
    assert response.status_code == 400
    shown = rows(response)
    assert shown["batch_size"].errors == ["Ensure this value is greater than or equal to 1."]
    assert shown["learning_rate"].errors == ["A valid number is required."]
    assert shown["model_name"].errors == ["This field may not be blank."]
    assert "Ensure this value is greater than or equal to 1." in row_html(response, "batch_size")
    assert shown["batch_size"].value == "0" and shown["learning_rate"].value == "fast"


def test_another_users_corpus_is_refused_by_the_corpus_field(alice_browser, alices_corpus, bobs_corpus, hub_models):
    response = alice_browser.post(URL, {**FIELDS, "corpus_file": "bobs-notes.txt"})
    assert response.status_code == 400
    assert rows(response)["corpus_file"].errors == [
        "Corpus file 'bobs-notes.txt' not found. Please upload it with POST /api/v1/upload first."]
    assert not TrainingJob.objects.exists()


@pytest.mark.parametrize("fields,field,words", [
    ({"architecture": "topk"}, "k", "k: required when architecture is 'topk'"),
    ({"architecture": "relu", "k": "4"}, "k", "k: only applies to"),
    ({"architecture": "topk", "k": "17"}, "k", "k: 17 is more than hidden_dim (16)."),
    ({"gpu_id": "99"}, "gpu_id", "gpu_id 99"),
    ({"model_name": "/etc"}, "model_name", "outside the folders"),
])
@pytest.mark.slow
def test_the_services_refusals_land_by_the_field_they_are_about(alice_browser, alices_corpus, hub_models,
                                                                  fields, field, words):
    response = alice_browser.post(URL, {**FIELDS, **fields})
    assert response.status_code == 400
    [message] = rows(response)[field].errors
    assert words in message
    assert message in row_html(response, field)
    assert response.context["top_errors"] == []


def test_a_refusal_no_field_is_about_shows_above_the_form(alice_browser, alice_api, alices_corpus, hub_models,
                                                          monkeypatch):
    from engine import disk

    monkeypatch.setattr(disk, "free_bytes", lambda folder: 1000)  # not even the checkpoints fit
    response = alice_browser.post(URL, FIELDS)
    assert response.status_code == 400
    [message] = response.context["top_errors"]
    assert message == alice_api.post("/api/v1/train", FIELDS).json()["detail"]  # the API's words
    assert "checkpoints" in message
    assert message in response.content.decode().split('id="form-errors"')[1].split("</ul>")[0]
    assert not any(row.errors for row in rows(response).values())


def test_a_post_without_the_csrf_token_is_refused(alice, alices_corpus, hub_models):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post(URL, FIELDS).status_code == 403
    assert not TrainingJob.objects.exists()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', client.get(URL).content.decode()).group(1)
    assert client.post(URL, {**FIELDS, "csrfmiddlewaretoken": token}).status_code == 302


def test_check_memory_shows_the_apis_verdict_and_disk_check_and_makes_no_job(alice_browser, alice_api, alices_corpus,
                                                                             hub_models):
    response = alice_browser.post(URL, {**FIELDS, "check_memory": "1"})
    assert response.status_code == 200
    assert not TrainingJob.objects.exists()
    memory = response.context["memory"]
    api = alice_api.get("/api/v1/check-memory/tiny/gpt2", {name: value for name, value in FIELDS.items()
                                                          if name != "model_name"}).json()
    for part in ("required_gb", "breakdown_gb", "sufficient"):
        assert memory["memory_check"][part] == api["memory_check"][part], part
    for part in ("cache", "passes", "estimated_tokens_per_pass", "needed_gb", "sufficient", "bytes_per_token"):
        assert memory["disk_check"][part] == api["disk_check"][part], part
    assert memory["disk_check"]["sufficient"] is True and memory["disk_check"]["passes"] == 2
    html = response.content.decode()
    verdict = html.split('id="memory-verdict"')[1].split("</p>")[0]
    assert ("Fits" if memory["memory_check"]["sufficient"] else "Does not fit") in verdict
    # The size as a person reads it (a tiny model needs some MB), and the API's number.
    number, unit = response.context["sizes"]["required"].split()
    assert f"{number} {unit}" in verdict
    in_gb = float(number) / {"GB": 1, "MB": 1024, "KB": 1024**2}[unit]
    assert abs(in_gb - memory["memory_check"]["required_gb"]) <= 0.01
    assert "Disk: fits" in html.split('id="disk-verdict"')[1].split("</p>")[0]
    assert rows(response)["hidden_dim"].value == "16"  # the form keeps what was sent


def test_check_memory_without_a_corpus_says_there_is_no_disk_estimate(alice_browser, hub_models):
    response = alice_browser.post(URL, {**FIELDS, "corpus_file": "", "check_memory": "1"})
    assert response.status_code == 200
    assert response.context["memory"]["disk_check"]["sufficient"] is None
    assert "Disk: not estimated" in response.content.decode()


def test_check_memory_refusals_land_by_their_fields(alice_browser, alices_corpus, hub_models):
    response = alice_browser.post(URL, {**FIELDS, "layer_number": "7", "check_memory": "1"})
    assert response.status_code == 400 and response.context["memory"] is None
    assert rows(response)["layer_number"].errors == ["layer_number 7 is out of range: tiny/gpt2 has 3 layers."]
    response = alice_browser.post(URL, {**FIELDS, "model_name": "", "check_memory": "1"})
    assert "Model name is empty" in rows(response)["model_name"].errors[0]
    response = alice_browser.post(URL, {**FIELDS, "max_epochs": "0", "check_memory": "1"})
    assert rows(response)["max_epochs"].errors == ["Ensure this value is greater than or equal to 1."]
