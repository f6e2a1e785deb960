"""A sweep with no Django: several SAEs on one tiny causal LM from one pass over the corpus, each
member as complete as a single run, one forward per batch for all of them, and a failing member
failing alone."""
import numpy as np
import pytest
import torch

from engine.activations.extract import extract_activations, extract_sites
from engine.errors import EngineError, TrainingDiverged
from engine.models.loading import load_model
from engine.models.resolve import resolve_model
from engine.run import run
from engine.run.sweep import SweepCallbacks, SweepSpec, run_sweep
from tests.engine.run.test_run import Recorder, config, model_spec

SETTINGS = [dict(k=4), dict(k=8, learning_rate=3e-3)]
SITES = [(0, "resid_post"), (1, "mlp_out")]


@pytest.fixture
def corpus(tmp_path, sample_texts):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(sample_texts * 2) + "\n")
    return path


def members(tmp_path, model_dir, corpus, settings=SETTINGS, sites=SITES, **overrides):
    specs = []
    for layer, point in sites:
        for number, values in enumerate(settings):
            name = f"L{layer}_{point}_{number}"
            specs.append(model_spec(tmp_path / name, model_dir, corpus, layer_number=layer, hook_point=point,
                                    config=config(**values), checkpoint_prefix=name,
                                    first_epoch_in_arrival_order=True, **overrides))
    return specs


def sweep(tmp_path, specs):
    return SweepSpec(members=specs, site_paths={(s.layer_number, s.hook_point): tmp_path / f"site_{s.layer_number}_{s.hook_point}.npy"
                                                for s in specs})


@pytest.mark.slow
def test_one_forward_per_batch_feeds_every_site_and_each_file_is_the_single_sites(tmp_path, tiny_llama_dir, sample_texts):
    loaded = load_model(resolve_model(str(tiny_llama_dir), models_dir=None), device="cpu", with_lm_head=True)
    forwards = []
    handle = loaded.model.register_forward_pre_hook(lambda *args: forwards.append(1))
    texts = sample_texts * 2
    extraction = extract_sites(loaded, texts, sites={site: tmp_path / f"{site[0]}_{site[1]}.npy" for site in SITES},
                               batch_size=4, max_sequence_length=16)
    handle.remove()
    batches = -(-len(texts) // 4)
    assert extraction.forward_batches == len(forwards) == batches
    for site in SITES:
        alone = extract_activations(loaded, texts, layer_number=site[0], hook_point=site[1], batch_size=4,
                                    max_sequence_length=16, out_path=tmp_path / f"alone_{site[0]}_{site[1]}.npy")
        together = np.load(extraction.results[site].path)
        assert np.array_equal(together, np.load(alone.path)) and together.shape[0] == extraction.n_tokens
        for suffix in ("_tokens.npy", "_arrival.npy"):
            side = lambda path: path.with_name(path.stem + suffix)  # noqa: E731
            assert np.array_equal(np.load(side(extraction.results[site].path)), np.load(side(alone.path)))


@pytest.mark.slow
def test_every_member_ends_as_its_single_run_with_the_same_seed(tmp_path, tiny_llama_dir, corpus):
    specs = members(tmp_path / "sweep", tiny_llama_dir, corpus)
    said = [Recorder() for _ in specs]
    ended = []
    outcome = run_sweep(sweep(tmp_path, specs), SweepCallbacks(
        members=[r.callbacks() for r in said], on_member_end=lambda i, result, error: ended.append((i, error))))
    assert ended == [(i, None) for i in range(len(specs))]
    texts = corpus.read_text().splitlines()
    assert outcome.forward_batches == -(-len(texts) // specs[0].batch_size)
    for index, (spec, member) in enumerate(zip(specs, outcome.outcomes)):
        assert member.status == "completed", index
        assert said[index].caches and said[index].caches[0].path == tmp_path / f"site_{spec.layer_number}_{spec.hook_point}.npy"
        assert (member.paths.saelens_dir / "cfg.json").is_file() and member.features_dir.is_dir()
        if index % 2 == 0:
            continue  # each site's second member against its single run
        single = run(model_spec(tmp_path / f"single{index}", tiny_llama_dir, corpus, layer_number=spec.layer_number,
                                hook_point=spec.hook_point, config=spec.config, first_epoch_in_arrival_order=True))
        # The same rows in the same order with the same seed: equal up to float rounding in the
        # trainer's reductions (the single run trains while it extracts, the member from the file).
        for name, tensor in single.result.sae.state_dict().items():
            assert torch.allclose(member.result.sae.state_dict()[name], tensor, atol=1e-5), (index, name)
        assert member.evaluation["explained_variance"] == pytest.approx(single.evaluation["explained_variance"], abs=1e-4)
        assert member.evaluation["ce_loss_reason"] is None


@pytest.mark.slow
def test_a_failing_member_fails_alone_and_the_others_complete(tmp_path, tiny_llama_dir, corpus):
    # A learning rate that makes the SAE diverge (NaN loss): that member's trainer stops it.
    specs = members(tmp_path / "sweep", tiny_llama_dir, corpus, settings=[dict(k=4), dict(learning_rate=1e12), dict(k=8)],
                    sites=[(1, "resid_post")])
    said = [Recorder() for _ in specs]
    outcome = run_sweep(sweep(tmp_path, specs), SweepCallbacks(members=[r.callbacks() for r in said]))
    assert isinstance(outcome.outcomes[1], TrainingDiverged)
    assert [o.status for i, o in enumerate(outcome.outcomes) if i != 1] == ["completed", "completed"]
    assert said[1].errors and said[1].errors[0][0] == "training"


@pytest.mark.slow
def test_cancelling_every_member_stops_the_extraction_and_a_rerun_resumes_each(tmp_path, tiny_llama_dir, corpus):
    specs = members(tmp_path / "sweep", tiny_llama_dir, corpus, sites=[(1, "resid_post")])
    stop = Recorder(stop_when=lambda recorder: True)
    outcome = run_sweep(sweep(tmp_path, specs), SweepCallbacks(members=[stop.callbacks() for _ in specs]))
    assert [o.cancelled_in for o in outcome.outcomes] == ["extraction", "extraction"]
    assert not (tmp_path / "site_1_resid_post.npy").exists() and outcome.forward_batches == 0

    # Member 0 cancelled after its first checkpoint; a rerun resumes it from there and uses the
    # site file the first run completed (no forward pass over the corpus again).
    first = [Recorder(stop_when=lambda recorder: len(recorder.checkpoints) >= 1), Recorder()]
    outcome = run_sweep(sweep(tmp_path, specs), SweepCallbacks(members=[r.callbacks() for r in first]))
    assert [o.status for o in outcome.outcomes] == ["cancelled", "completed"]
    checkpoint = first[0].checkpoints[-1].path
    again = [Recorder()]
    resumed = run_sweep(sweep(tmp_path, [specs[0].__class__(**{**specs[0].__dict__, "resume_from": checkpoint})]),
                        SweepCallbacks(members=[r.callbacks() for r in again]))
    assert resumed.forward_batches == 0 and resumed.outcomes[0].status == "completed"
    assert ("training", {"overlapped": False, "resume_from": checkpoint}) in again[0].phases


@pytest.mark.slow
def test_members_must_share_what_the_pass_over_the_corpus_decides(tmp_path, tiny_llama_dir, corpus):
    specs = members(tmp_path / "sweep", tiny_llama_dir, corpus, sites=[(1, "resid_post")])
    specs[1].max_sequence_length = 8
    with pytest.raises(EngineError, match="max_sequence_length differs"):
        run_sweep(sweep(tmp_path, specs), SweepCallbacks(members=[Recorder().callbacks() for _ in specs]))
