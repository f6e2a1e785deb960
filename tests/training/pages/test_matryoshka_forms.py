"""matryoshka_widths on the New job form and in a sweep's members: typed as text ("64, 256"), blank
when not given, refused next to the field, and the job made with the widths hidden_dim completes."""
import pytest

from training.models import TrainingJob
from training.pages.sweep_form import parse_members
from training.api.sweep_serializers import SweepRequestSerializer

pytestmark = pytest.mark.django_db

FIELDS = {"model_name": "tiny/gpt2", "corpus_file": "reviews.txt", "layer_number": "1", "hidden_dim": "256",
          "max_epochs": "2", "max_sequence_length": "32", "architecture": "matryoshka_batchtopk", "k": "8",
          "exclude_special_tokens": "true", "prepend_bos": "true"}


@pytest.fixture(autouse=True)
def _what_the_forms_offer(reviews_corpus, hub_models):
    """alice's reviews.txt (and the tiny models), which the forms here offer."""


def rows(response):
    return {row.name: row for _, section in response.context["sections"] for row in section}


def test_the_form_has_a_text_row_for_the_widths_in_the_sae_section(alice_browser):
    response = alice_browser.get("/jobs/new/")
    row = rows(response)["matryoshka_widths"]
    assert (row.label, row.widget, row.value) == ("Matryoshka widths", "text", "")
    sae_section = dict(response.context["sections"])["SAE"]
    assert "matryoshka_widths" in [r.name for r in sae_section]


def test_widths_typed_in_the_form_make_the_job(alice_browser):
    response = alice_browser.post("/jobs/new/", {**FIELDS, "matryoshka_widths": "16, 64"})
    assert response.status_code == 302
    assert TrainingJob.objects.get().matryoshka_widths == [16, 64, 256]


def test_a_blank_widths_input_is_the_default_from_hidden_dim(alice_browser):
    assert alice_browser.post("/jobs/new/", {**FIELDS, "matryoshka_widths": ""}).status_code == 302
    assert TrainingJob.objects.get().matryoshka_widths == [8, 24, 56, 120, 256]


def test_bad_widths_are_shown_next_to_the_field_with_what_was_sent(alice_browser):
    response = alice_browser.post("/jobs/new/", {**FIELDS, "matryoshka_widths": "64 16"})
    assert response.status_code == 400
    row = rows(response)["matryoshka_widths"]
    assert row.value == "64 16" and "must be strictly increasing" in " ".join(row.errors)
    assert not TrainingJob.objects.exists()


def test_a_sweep_member_sets_its_widths_as_space_separated_text():
    members, problems = parse_members("architecture=matryoshka_batchtopk, k=8, matryoshka_widths=16 64\nk=8")
    assert not problems
    body = {"model_name": "tiny/gpt2", "corpus_file": "reviews.txt", "architecture": "batchtopk", "members": members}
    serializer = SweepRequestSerializer(data=body)
    assert serializer.is_valid(), serializer.errors
    assert serializer.validated_data["members"][0]["matryoshka_widths"] == [16, 64]
    bad = SweepRequestSerializer(data={**body, "members": [{"matryoshka_widths": "sixteen"}]})
    assert not bad.is_valid() and "members[0].matryoshka_widths" in bad.errors
