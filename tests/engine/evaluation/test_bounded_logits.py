"""Next-token evaluation in bounded memory: the LM head runs on a few predictions at a time, and the
numbers are those of full-vocabulary logits over whole batches."""
import pytest
import torch

from engine.errors import EngineError
from engine.models.hooks import register_writer
from engine.evaluation.next_token import HeadNotSupported, ce_loss_evaluation, logits_chunk_tokens
from engine.models.loading import load_model
from engine.models.resolve import resolve_model
from engine.text.sequences import encode


def load(directory):
    return load_model(resolve_model(str(directory), models_dir=None), device="cpu", with_lm_head=True)


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return load(tiny_llama_dir)


@pytest.fixture(scope="module")
def gemma2(tiny_gemma2_dir):
    return load(tiny_gemma2_dir)


def halve(x):
    return x * 0.5


def evaluate(loaded, texts, *, batch_size=4, **options):
    return ce_loss_evaluation(loaded, texts, layer_number=1, reconstruct=halve, max_sequence_length=24,
                              batch_size=batch_size, **options)


def full_logits_reference(loaded, texts):
    """The evaluation as it was before it was bounded: full-vocabulary float32 logits of whole
    sequences, every variant's log-softmax alive at once (one sequence a batch: no padding)."""
    sequences = encode(loaded.tokenizer, texts, max_sequence_length=24, causal=True, prepend_bos=True,
                       exclude_special_tokens=True)
    totals = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    kl = {"sae": 0.0, "zero": 0.0}
    n = 0
    state = {"mode": "clean", "rows": None}

    def splice(hidden):
        if state["mode"] == "clean":
            return None
        replaced = halve(hidden.float()).to(hidden.dtype) if state["mode"] == "sae" else torch.zeros_like(hidden)
        return torch.where(state["rows"][..., None], replaced, hidden)

    handle = register_writer(loaded.blocks[1], "resid_post", splice)
    try:
        with torch.inference_mode():
            for ids, keep in zip(sequences.ids, sequences.keep):
                input_ids = torch.tensor([ids])
                state["rows"] = torch.from_numpy(keep)[None]
                predicted = state["rows"][:, :-1]
                targets = input_ids[:, 1:][predicted]
                n += int(predicted.sum())
                log_probs = {}
                for mode in totals:
                    state["mode"] = mode
                    logits = loaded.model(input_ids=input_ids).logits[:, :-1][predicted].float()
                    log_probs[mode] = torch.log_softmax(logits, dim=-1)
                    totals[mode] += float(-log_probs[mode].gather(1, targets[:, None]).double().sum())
                for mode in kl:
                    terms = torch.nn.functional.kl_div(log_probs[mode], log_probs["clean"], log_target=True,
                                                       reduction="none")
                    kl[mode] += float(terms.sum(dim=-1).double().sum())
    finally:
        handle.remove()
    return {"ce_loss_clean": totals["clean"] / n, "ce_loss_with_sae": totals["sae"] / n,
            "ce_loss_zero_ablation": totals["zero"] / n, "kl_div_with_sae": kl["sae"] / n,
            "kl_div_with_ablation": kl["zero"] / n, "ce_eval_tokens": n}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["llama", "gemma2"])
def test_chunked_logits_give_the_numbers_of_full_logits(model, request, sample_texts):
    # Gemma 2 soft-caps its logits after the head: the chunks must do the same.
    loaded = request.getfixturevalue(model)
    expected = full_logits_reference(loaded, sample_texts[:10])
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    for logits_bytes in (4 * 4 * vocab * 3, 256 * 2**20):  # three predictions at a time, then whole batches
        result = evaluate(loaded, sample_texts[:10], logits_bytes=logits_bytes, batch_size=1)
        assert result["ce_eval_tokens"] == expected["ce_eval_tokens"]
        for name, value in expected.items():
            assert result[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name


@pytest.mark.slow
def test_no_tensor_of_logits_exceeds_the_budget(llama, sample_texts):
    head = llama.model.get_output_embeddings()
    vocab = head.weight.shape[0]
    budget = 4 * 4 * vocab * 5
    widest = []
    plain = type(head).forward

    def recorded(hidden):
        out = plain(head, hidden)
        widest.append(out.shape[:-1].numel())
        return out

    head.forward = recorded
    try:
        evaluate(llama, sample_texts, logits_bytes=budget)
    finally:
        del head.forward
    # The model's own forward computes the head on one position a sequence (batch 4); the
    # measured predictions go through it 5 at a time.
    assert logits_chunk_tokens(vocab, budget) == 5
    assert max(widest) == 5 and len(widest) > 10


@pytest.mark.slow
def test_the_tokens_measured_stop_at_the_cap_and_are_reported(llama, sample_texts):
    capped = evaluate(llama, sample_texts, max_tokens=40)
    whole = evaluate(llama, sample_texts)
    # Whole sequences are kept until the cap is reached: at most one sequence past it.
    assert 30 <= capped["ce_eval_tokens"] < 40 + 24 < whole["ce_eval_tokens"]


def test_a_budget_too_small_for_one_prediction_names_the_setting(llama, sample_texts):
    with pytest.raises(EngineError, match="eval_logits_bytes 1,000 holds no prediction's logits over a vocabulary of 50,257"):
        evaluate(llama, sample_texts, logits_bytes=1000)


def test_a_model_that_post_processes_its_logits_unknowingly_is_refused_not_mismeasured(tiny_llama_dir, sample_texts):
    loaded = load(tiny_llama_dir)
    original = type(loaded.model).forward

    def forward(self, *args, **kwargs):  # a post-processing step this evaluation does not know
        out = original(self, *args, **kwargs)
        out.logits = out.logits * 2.0
        return out

    loaded.model.forward = forward.__get__(loaded.model)
    with pytest.raises(HeadNotSupported, match="post-processes its logits"):
        evaluate(loaded, sample_texts[:4])
