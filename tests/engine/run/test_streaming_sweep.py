"""A sweep that streams (no site file): the model runs once per group of sequences for every
member at every site, each member's SAE is the one its run alone would stream, a member whose
budget ends sooner stops while the others go on, and a cancelled sweep resumes each member at its
own checkpoint."""
import json
from dataclasses import replace

import pytest
import torch

from engine.run import RunCallbacks, run
from engine.run.sweep import SweepCallbacks, SweepSpec, run_sweep
from engine.activations.stream import ActivationStream
from tests.engine.run.test_run import Recorder
from tests.engine.run.test_run_streaming import config, spec

SITES = [(0, "resid_post"), (1, "mlp_out")]
# Different batches (so different blocks) and sparsities: each member reads the pass at its own pace.
SETTINGS = [dict(k=4), dict(k=8, learning_rate=3e-3, sae_batch_tokens=96)]


@pytest.fixture
def corpus(tmp_path, sample_texts):
    path = tmp_path / "docs.jsonl"
    documents = [" ".join(sample_texts[i : i + 2]) for i in range(0, len(sample_texts), 2)] * 4
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    return path


@pytest.fixture
def forwards(monkeypatch):
    """Every group the model computed: the sites it read (None: the stream's own site alone)."""
    calls = []
    original = ActivationStream._forward

    def counted(self, group, first_sequence, should_stop, sites=None):
        calls.append(None if sites is None else tuple(sites))
        return original(self, group, first_sequence, should_stop, sites)

    monkeypatch.setattr(ActivationStream, "_forward", counted)
    return calls


def member_specs(folder, model_dir, corpus, settings=SETTINGS, sites=SITES, **overrides):
    specs = []
    for layer, point in sites:
        for number, values in enumerate(settings):
            name = f"L{layer}_{point}_{number}"
            specs.append(spec(folder / name, model_dir, corpus, layer_number=layer, hook_point=point, batch_size=2,
                              config=config(**values), checkpoint_prefix=name, cache_activations="never", **overrides))
    return specs


def sweep_of(folder, specs):
    return SweepSpec(members=specs, site_paths={(s.layer_number, s.hook_point): folder / f"site_{s.layer_number}_{s.hook_point}.npy"
                                                for s in specs})


def alone(folder, member, forwards=None):
    """The member as a run of its own, streamed; with `forwards`, how many groups its training computed."""
    trained = []

    def on_phase(phase, **details):
        if phase == "evaluating":
            trained.append(len(forwards or []))

    outcome = run(replace(member, paths=member.paths.in_folder(folder), cache_activations="never"),
                  RunCallbacks(on_phase=on_phase))
    return outcome, (trained[0] if trained else None)


def assert_same_sae(ours, theirs, what):
    for name, tensor in theirs.sae.state_dict().items():
        assert torch.allclose(ours.sae.state_dict()[name], tensor, atol=1e-5), (what, name)


@pytest.mark.slow
def test_one_forward_per_group_feeds_every_member_and_each_is_its_run_alone(tmp_path, tiny_gpt2_dir, corpus, forwards):
    specs = member_specs(tmp_path / "sweep", tiny_gpt2_dir, corpus)
    said = [Recorder() for _ in specs]
    outcome = run_sweep(sweep_of(tmp_path, specs), SweepCallbacks(members=[r.callbacks() for r in said]))
    assert outcome.streamed and [o.status for o in outcome.outcomes] == ["completed"] * 4
    assert not list(tmp_path.glob("site_*")) and not list((tmp_path / "sweep").rglob("*_activations.npy"))
    shared = [sites for sites in forwards if sites is not None]
    assert set(shared) == {tuple(SITES)}  # both sites from each forward
    assert outcome.forward_batches > 0 and outcome.tokens_extracted > 0

    # One member alone computes as many groups in training as the whole sweep did for all four.
    forwards.clear()
    single, groups_alone = alone(tmp_path / "alone0", specs[0], forwards)
    assert groups_alone > 1 and len(shared) == groups_alone
    assert_same_sae(outcome.outcomes[0].result, single.result, 0)
    for index in (1, 3):  # the other batch size, at each site
        single, _ = alone(tmp_path / f"alone{index}", specs[index])
        assert_same_sae(outcome.outcomes[index].result, single.result, index)
        assert outcome.outcomes[index].result.tokens_trained == single.result.tokens_trained
        assert outcome.outcomes[index].evaluation["explained_variance"] == pytest.approx(
            single.evaluation["explained_variance"], abs=1e-4)
    for index, member in enumerate(outcome.outcomes):
        stats = member.training_stats
        assert stats["activations_cached"] is False and "never" in stats["cache_decision"], index
        assert member.evaluation["ce_loss_reason"] is None and member.features_dir.is_dir()
        assert [phase for phase, _ in said[index].phases] == ["loading", "training", "evaluating", "analyzing"]


@pytest.mark.slow
def test_a_member_whose_budget_ends_sooner_stops_while_the_others_go_on(tmp_path, tiny_gpt2_dir, corpus, forwards):
    specs = member_specs(tmp_path / "sweep", tiny_gpt2_dir, corpus, settings=[dict(k=4)], sites=SITES)
    specs[0] = replace(specs[0], training_tokens=300)  # a third of the pass
    specs[1] = replace(specs[1], config=config(max_epochs=2))  # two passes
    outcome = run_sweep(sweep_of(tmp_path, specs), SweepCallbacks(members=[Recorder().callbacks() for _ in specs]))
    short, long = (member.result for member in outcome.outcomes)
    assert short.tokens_trained == 300 and short.stopped_reason == "training_tokens"
    assert long.total_epochs == 2 and long.tokens_trained == 2 * long.training_rows
    # The second pass read the deeper site alone (the short member's site is not computed).
    assert (tuple(SITES[1:]),) in {(sites,) for sites in forwards if sites is not None}
    for index, member in enumerate(specs):
        single, _ = alone(tmp_path / f"alone{index}", member)
        assert_same_sae(outcome.outcomes[index].result, single.result, index)


@pytest.mark.slow
def test_a_cancelled_streaming_sweep_resumes_each_member_at_its_checkpoint(tmp_path, tiny_gpt2_dir, corpus):
    specs = member_specs(tmp_path / "sweep", tiny_gpt2_dir, corpus, settings=[dict(k=4)], sites=SITES)
    # Each cancelled mid-pass at its own step: its checkpoint keeps its step and its block's seek.
    said = [Recorder(stop_when=lambda r, n=n: len(r.progress) >= n) for n in (3, 7)]
    outcome = run_sweep(sweep_of(tmp_path, specs), SweepCallbacks(members=[r.callbacks() for r in said]))
    assert [o.cancelled_in for o in outcome.outcomes] == ["training", "training"]
    checkpoints = [r.checkpoints[-1].path for r in said]
    steps = [torch.load(path, weights_only=False)["step"] for path in checkpoints]
    assert steps[0] < steps[1]

    resumed = [replace(s, resume_from=path) for s, path in zip(specs, checkpoints)]
    again = [Recorder() for _ in resumed]
    outcome = run_sweep(sweep_of(tmp_path, resumed), SweepCallbacks(members=[r.callbacks() for r in again]))
    assert outcome.streamed and [o.status for o in outcome.outcomes] == ["completed", "completed"]
    assert [r.phases[1] for r in again] == [("training", {"overlapped": False, "resume_from": p}) for p in checkpoints]
    # Each ends as the same run uninterrupted (the same tokens, in the same batches).
    for index, member in enumerate(specs):
        single, _ = alone(tmp_path / f"alone{index}", member)
        assert_same_sae(outcome.outcomes[index].result, single.result, index)
        assert outcome.outcomes[index].result.tokens_trained == single.result.tokens_trained
