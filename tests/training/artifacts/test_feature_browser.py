"""After training, a job's features can be listed and read through the API and browsed in pages:
a real job trained in-process on a tiny causal LM, then the real endpoints and templates."""
import numpy as np
import pytest

from tests.model_fixtures import SAMPLE_CORPUS
from tests.training.worker.test_pipeline import make_job
from training import services
from training.models import TrainingJob
from training.worker.job import job_run

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def trained(alice, hub_models, settings):
    settings.FEATURE_TOP_N = 5
    settings.FEATURE_CONTEXT_WINDOW = 3
    job = make_job(alice, model_name="tiny/gpt2", layer_number=1, hidden_dim=48, max_epochs=3, min_loss=0,
                   learning_rate=1e-3, max_sequence_length=24, sae_batch_tokens=256)
    job = job_run(job.id)
    assert job.status == TrainingJob.Status.COMPLETED, job.message
    return job


@pytest.mark.slow
def test_a_finished_job_lists_pages_sorts_and_filters_its_features(trained, alice_api):
    url = f"/api/v1/train/{trained.id}/features"
    first = alice_api.get(url, {"page_size": 10}).json()
    assert first["total_features"] == 48 and first["count"] == 48 and first["pages"] == 5
    assert first["analyzed_tokens"] == np.load(trained.activations_path, mmap_mode="r").shape[0]
    frequencies = [f["frequency"] for f in first["results"]]
    assert frequencies == sorted(frequencies, reverse=True) and len(frequencies) == 10
    everything = alice_api.get(url, {"page_size": 500, "sort": "index", "order": "asc"}).json()["results"]
    assert [f["index"] for f in everything] == list(range(48))
    by_max = alice_api.get(url, {"page_size": 500, "sort": "max_activation", "order": "asc"}).json()["results"]
    assert [f["max_activation"] for f in by_max] == sorted(f["max_activation"] for f in everything)
    dead = alice_api.get(url, {"filter": "dead", "page_size": 500}).json()
    alive = alice_api.get(url, {"filter": "alive", "page_size": 500}).json()
    assert dead["count"] + alive["count"] == 48
    assert all(f["dead"] and f["frequency"] == 0 for f in dead["results"])
    # The analysis and the seed's feature statistics agree on which features are alive.
    assert alive["count"] == trained.training_stats["feature_statistics"]["active_features"]


@pytest.mark.slow
def test_a_feature_has_its_top_contexts_histogram_and_logit_effect(trained, alice_api):
    listing = alice_api.get(f"/api/v1/train/{trained.id}/features", {"page_size": 1}).json()
    index = listing["results"][0]["index"]
    feature = alice_api.get(f"/api/v1/train/{trained.id}/features/{index}").json()
    assert feature["index"] == index and feature["frequency"] > 0
    contexts = feature["top_contexts"]
    assert 1 <= len(contexts) <= 5
    assert [c["activation"] for c in contexts] == sorted((c["activation"] for c in contexts), reverse=True)
    assert contexts[0]["activation"] == pytest.approx(feature["max_activation"], rel=1e-3)
    for context in contexts:
        peaks = [t for t in context["tokens"] if t["peak"]]
        assert len(peaks) == 1 and peaks[0]["activation"] == pytest.approx(context["activation"], rel=1e-2, abs=1e-3)
        assert 1 <= len(context["tokens"]) <= 7  # the peak and up to 3 tokens each side, inside its sequence
        assert all(isinstance(t["token"], str) and t["token_id"] >= 0 for t in context["tokens"])
    # The peak token's id is the one stored for that activation row.
    tokens = np.load(trained.activations_path.replace("_activations.npy", "_activations_tokens.npy"))
    assert all(next(t for t in c["tokens"] if t["peak"])["token_id"] == tokens[c["row"]] for c in contexts)
    histogram = feature["histogram"]
    assert len(histogram["log10_bin_edges"]) == len(histogram["counts"]) + 1
    firing = round(feature["frequency"] * listing["analyzed_tokens"])
    assert sum(histogram["counts"]) == firing
    effect = feature["logit_effect"]  # GPT-2 is a causal LM: its unembedding gives a logit effect
    assert len(effect["promoted"]) == 10 and len(effect["suppressed"]) == 10
    assert effect["promoted"][0]["logit"] >= effect["promoted"][-1]["logit"] > effect["suppressed"][0]["logit"]
    assert feature["logit_effect_unavailable_reason"] is None


@pytest.mark.slow
def test_curves_record_loss_l0_and_explained_variance_over_steps(trained, alice_api):
    curves = alice_api.get(f"/api/v1/train/{trained.id}/curves").json()
    points = curves["points"]
    assert len(points) >= 2 and curves["features_ready"] is True
    assert [p["step"] for p in points] == sorted({p["step"] for p in points})
    assert all(p["loss"] > 0 and 0 < p["l0"] <= 48 and p["explained_variance"] <= 1 for p in points)
    assert curves["loss_history"] == trained.training_stats["loss_history"]


@pytest.mark.slow
def test_features_answer_only_their_owner_and_staff_and_explain_what_is_missing(trained, alice_api, bob_api,
                                                                               charlie_api, alice):
    url = f"/api/v1/train/{trained.id}/features"
    assert bob_api.get(url).status_code == 404
    assert bob_api.get(f"{url}/0").status_code == 404
    assert charlie_api.get(url).status_code == 200
    for params, word in (({"sort": "colour"}, "sort must be one of"), ({"filter": "odd"}, "filter must be one of"),
                         ({"page": "x"}, "page must be an integer"), ({"page_size": 100000}, "page_size"),
                         ({"order": "up"}, "order must be asc or desc")):
        response = alice_api.get(url, params)
        assert response.status_code == 400 and word in response.json()["detail"], params
    missing = alice_api.get(f"{url}/48")
    assert missing.status_code == 404 and "features 0 to 47" in missing.json()["detail"]
    queued = services.job_create(owner=alice, enqueue=False, request=services.JobRequest(
        model_name="tiny/gpt2", corpus_file=SAMPLE_CORPUS.name, layer_number=1, hidden_dim=16))
    response = alice_api.get(f"/api/v1/train/{queued.id}/features")
    assert response.status_code == 409 and "appear when the analysis phase ends" in response.json()["detail"]


@pytest.mark.slow
def test_the_pages_show_curves_features_and_contexts_to_the_owner_only(trained, client, alice, bob):
    client.force_login(alice)
    page = client.get(f"/jobs/{trained.id}/")
    assert page.status_code == 200
    html = page.content.decode()
    for marker in ('id="curve-loss"', 'id="curve-l0"', 'id="curve-ev"', 'id="density"', 'id="feature-table"',
                   "explained variance", "Sparsity coefficient", "_sae.pt"):
        assert marker in html, marker
    listing = client.get(f"/api/v1/train/{trained.id}/features", {"page_size": 1}).json()
    index = listing["results"][0]["index"]
    feature_page = client.get(f"/jobs/{trained.id}/features/{index}/")
    assert feature_page.status_code == 200
    html = feature_page.content.decode()
    assert html.count('class="context-row"') >= 1 and 'class="tok peak"' in html and 'id="promoted"' in html
    assert client.get(f"/jobs/{trained.id}/features/999/").status_code == 404
    assert trained.id in client.get("/jobs/").content.decode()
    client.force_login(bob)
    assert client.get(f"/jobs/{trained.id}/").status_code == 404
    assert client.get(f"/jobs/{trained.id}/features/{index}/").status_code == 404
    assert trained.id not in client.get("/jobs/").content.decode()
    client.logout()
    assert client.get(f"/jobs/{trained.id}/").status_code == 302  # to the login page


@pytest.mark.slow
def test_a_search_finds_features_by_the_tokens_they_fire_on_or_by_index(trained, alice_api):
    url = f"/api/v1/train/{trained.id}/features"
    top = alice_api.get(url, {"page_size": 1}).json()["results"][0]["index"]
    feature = alice_api.get(f"{url}/{top}").json()
    peak = next(t for t in feature["top_contexts"][0]["tokens"] if t["peak"])["token"].strip()
    found = alice_api.get(url, {"q": peak.upper(), "page_size": 500}).json()
    assert top in [f["index"] for f in found["results"]] and found["query"] == peak.upper()
    assert 1 <= found["count"] <= 48
    assert [f["index"] for f in alice_api.get(url, {"q": "7", "page_size": 500}).json()["results"]].count(7) == 1
    assert alice_api.get(url, {"q": "no token reads like this ☃"}).json()["count"] == 0
