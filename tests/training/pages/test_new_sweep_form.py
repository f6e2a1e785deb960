"""The New sweep page with Django's test client: the base's defaults and the sweep's own fields,
members typed one per line, a sweep made by the path POST /api/v1/sweeps takes, and every refusal
next to the field it is about."""
import html

import pytest

from tests.django_fixtures import queued_tasks
from training.models import Sweep
from training.pages.sweep_form import parse_members

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _what_the_forms_offer(reviews_corpus):
    """alice's reviews.txt (and the tiny models), which the forms here offer."""


def form(**fields):
    return {"model_name": "tiny/gpt2", "corpus_file": "reviews.txt", "layer_number": "1", "hidden_dim": "32",
            "max_sequence_length": "16", "architecture": "topk", "k": "4", "hook_point": "resid_post",
            "quantization": "none", "cache_activations": "auto", "layers": "0, 2", "hook_points": "",
            "members": "\nk=8, learning_rate=0.0003\n", "exclude_special_tokens": "true", "prepend_bos": "true",
            "create": "1", **fields}


def test_members_are_read_one_per_line_of_name_value_pairs():
    assert parse_members("") == ([{}], [])
    assert parse_members("\nk=8, learning_rate=0.0003\n\n") == ([{}, {"k": "8", "learning_rate": "0.0003"}], [])
    assert parse_members("architecture=jumprelu, k=none, target_l0=6") == (
        [{"architecture": "jumprelu", "k": None, "target_l0": "6"}], [])
    assert parse_members("k 8")[1] == ["line 1: 'k 8' is not name=value"]


def test_the_page_shows_the_sweeps_fields_and_the_bases_defaults(alice_browser):
    page = alice_browser.get("/sweeps/new/").content.decode()
    for name in ("layers", "hook_points", "members", "layer_number", "hidden_dim", "corpus_file"):
        assert f'id="id_{name}"' in page
    assert '<option value="reviews.txt">' in page and 'name="members"' in page


def test_a_valid_form_makes_the_sweep_and_goes_to_its_page(alice_browser, hub_models, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_browser.post("/sweeps/new/", form())
    sweep = Sweep.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/sweeps/{sweep.id}/"
    jobs = list(sweep.jobs.order_by("created_at", "pk"))
    assert [(j.layer_number, j.k, j.learning_rate) for j in jobs] == [
        (0, 4, jobs[0].learning_rate), (0, 8, 3e-4), (2, 4, jobs[0].learning_rate), (2, 8, 3e-4)]
    assert [task["func"] for task in queued_tasks()] == ["training.tasks.run_sweep"]


@pytest.mark.parametrize("fields, row, says", [
    ({"layers": "0, 9"}, "layers", "members[0] at layer 9, resid_post: layer_number 9 is out of range"),
    ({"members": "k=8\nbatch_size=4"}, "members", "members[1].batch_size: cannot differ between members"),
    ({"members": "k=0"}, "members", "members[0].k:"),
    ({"members": "k 8"}, "members", "line 1: 'k 8' is not name=value"),
    ({"hook_points": "resid_post, nowhere"}, "hook_points", "nowhere"),
])
@pytest.mark.slow
def test_a_refused_sweep_comes_back_with_the_error_next_to_its_field(alice_browser, hub_models, fields, row, says):
    response = alice_browser.post("/sweeps/new/", form(**fields))
    assert response.status_code == 400 and not Sweep.objects.exists()
    page = html.unescape(response.content.decode())
    start = page.index(f'id="row-{row}"')
    assert says in page[start:page.index('class="help"', start)], page[start:start + 2000]
    assert 'id="form-errors"' not in page
