import pytest

from engine.errors import EngineError
from engine.evaluation.next_token import MIN_ABLATION_EFFECT, ce_loss_evaluation
from engine.models.loading import load_model
from engine.models.resolve import resolve_model


@pytest.fixture(scope="module")
def gpt2_with_head(tiny_gpt2_dir):
    return load_model(resolve_model(str(tiny_gpt2_dir), models_dir=None), device="cpu", with_lm_head=True)


# A few dozen texts: hundreds of predictions, each over GPT-2's 50,257-token vocabulary (the whole
# demo corpus took ten seconds and more a test and shows nothing more).
FEW = 24


def evaluate(loaded, texts, reconstruct):
    return ce_loss_evaluation(loaded, texts, layer_number=1, reconstruct=reconstruct, max_sequence_length=24,
                              batch_size=4)


def test_a_perfect_reconstruction_recovers_all_of_the_loss(gpt2_with_head, sample_texts):
    result = evaluate(gpt2_with_head, sample_texts[:FEW], lambda x: x)
    assert result["ce_loss_with_sae"] == pytest.approx(result["ce_loss_clean"], rel=1e-5)
    assert result["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4) and result["ce_loss_reason"] is None
    # A random tiny model predicts nearly uniformly, so ablation moves its loss only a little.
    assert abs(result["ce_loss_zero_ablation"] - result["ce_loss_clean"]) > 1e-4
    assert result["ce_eval_tokens"] > 100
    assert result["kl_div_with_sae"] == pytest.approx(0.0, abs=1e-6) and result["kl_div_with_ablation"] > 1e-6
    assert result["kl_div_score"] == pytest.approx(1.0, abs=1e-4) and result["kl_div_reason"] is None


def test_a_zero_reconstruction_recovers_none(gpt2_with_head, sample_texts):
    result = evaluate(gpt2_with_head, sample_texts[:FEW], lambda x: x * 0)
    assert result["ce_loss_with_sae"] == pytest.approx(result["ce_loss_zero_ablation"], rel=1e-5)
    assert result["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-4)
    assert result["kl_div_with_sae"] == pytest.approx(result["kl_div_with_ablation"], rel=1e-5)
    assert result["kl_div_score"] == pytest.approx(0.0, abs=1e-4)


def test_when_ablation_leaves_the_loss_unchanged_recovery_is_null_and_says_why(tiny_gpt2_dir, sample_texts):
    import torch

    loaded = load_model(resolve_model(str(tiny_gpt2_dir), models_dir=None), device="cpu", with_lm_head=True)
    with torch.no_grad():  # a final norm of zeros: uniform logits, whatever layer 1 outputs
        loaded.model.transformer.ln_f.weight.zero_()
        loaded.model.transformer.ln_f.bias.zero_()
    result = evaluate(loaded, sample_texts[:FEW], lambda x: x * 0.5)
    assert result["ce_loss_zero_ablation"] == pytest.approx(result["ce_loss_clean"], abs=MIN_ABLATION_EFFECT)
    assert result["ce_loss_recovered"] is None
    assert result["ce_loss_reason"] == (
        "zero-ablating layer 1 changes the loss by less than 1e-09 nats per token: recovery is undefined"
    )
    assert result["ce_loss_clean"] is not None and result["ce_loss_with_sae"] is not None
    assert result["kl_div_score"] is None and "KL score is undefined" in result["kl_div_reason"]


def test_the_clean_loss_is_the_models_own_loss_after_a_bos_not_counting_the_prediction_at_the_bos(gpt2_with_head, sample_texts):
    # The defaults: a BOS in front (GPT-2's tokenizer adds none), and no loss on the prediction
    # made from the BOS, a special token (label -100 is what the model's own loss skips).
    import torch

    tok = gpt2_with_head.tokenizer
    ids = torch.tensor([[tok.bos_token_id, *tok(sample_texts[0])["input_ids"]]])
    labels = ids.clone()
    labels[0, 1] = -100
    with torch.inference_mode():
        expected = gpt2_with_head.model(input_ids=ids, labels=labels).loss.item()
    result = evaluate(gpt2_with_head, sample_texts[:1], lambda x: x)
    assert result["ce_loss_clean"] == pytest.approx(expected, rel=1e-4)
    assert result["ce_eval_tokens"] == ids.shape[1] - 2


def test_without_a_bos_or_exclusions_the_clean_loss_is_the_models_own_loss(gpt2_with_head, sample_texts):
    import torch

    tok = gpt2_with_head.tokenizer
    ids = tok(sample_texts[0], return_tensors="pt").input_ids
    with torch.inference_mode():
        expected = gpt2_with_head.model(input_ids=ids, labels=ids).loss.item()
    result = ce_loss_evaluation(gpt2_with_head, sample_texts[:1], layer_number=1, reconstruct=lambda x: x,
                                max_sequence_length=24, batch_size=4, prepend_bos=False, exclude_special_tokens=False)
    assert result["ce_loss_clean"] == pytest.approx(expected, rel=1e-4)
    assert result["ce_eval_tokens"] == ids.shape[1] - 1


def test_a_model_without_its_head_is_refused(tiny_gpt2_dir, sample_texts):
    base = load_model(resolve_model(str(tiny_gpt2_dir), models_dir=None), device="cpu")
    with pytest.raises(EngineError, match="LM head"):
        evaluate(base, sample_texts, lambda x: x)


def test_the_kl_divergence_is_the_mean_over_predicted_tokens_of_the_clean_to_spliced_kl(tiny_gpt2_dir, sample_texts):
    import torch

    loaded = load_model(resolve_model(str(tiny_gpt2_dir), models_dir=None), device="cpu", with_lm_head=True)
    with torch.no_grad():  # a sharp final norm: peaked distributions, so KL's two directions differ
        loaded.model.transformer.ln_f.weight.mul_(40)
    # No BOS and every position spliced: the plain per-token KL, computed below by hand.
    flipped = ce_loss_evaluation(loaded, sample_texts[:1], layer_number=1, reconstruct=lambda x: -x,
                                 max_sequence_length=24, batch_size=4, prepend_bos=False,
                                 exclude_special_tokens=False)
    ids = loaded.tokenizer(sample_texts[0], return_tensors="pt").input_ids
    with torch.inference_mode():
        clean = torch.log_softmax(loaded.model(input_ids=ids).logits[0, :-1].double(), dim=-1)
        handle = loaded.blocks[1].register_forward_hook(
            lambda _m, _i, out: (-out[0], *out[1:]) if isinstance(out, tuple) else -out)
        try:
            spliced = torch.log_softmax(loaded.model(input_ids=ids).logits[0, :-1].double(), dim=-1)
        finally:
            handle.remove()
    expected = float((clean.exp() * (clean - spliced)).sum(dim=-1).mean())
    reverse = float((spliced.exp() * (spliced - clean)).sum(dim=-1).mean())
    assert abs(reverse - expected) > 0.01 * expected  # so the check below tells the directions apart
    assert flipped["kl_div_with_sae"] == pytest.approx(expected, rel=1e-3)
