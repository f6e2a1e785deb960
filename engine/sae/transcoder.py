"""Transcoders: a sparse code of one site that predicts another. The encoder reads an MLP's input
(after its norm), the decoder predicts the MLP's output (Dunefsky et al. 2024, "Transcoders Find
Interpretable LLM Feature Circuits"):

    f = TopK(x W_enc + b_enc),     y_hat = f W_dec + b_dec            (transcoder)
    y_hat = f W_dec + b_dec + x W_skip^T                              (skip_transcoder)

The skip transcoder's learned linear skip (Paulo et al. 2025, arXiv 2501.18823, "Transcoders Beat
Sparse Autoencoders for Interpretability") carries the MLP's linear part, leaving the features the
non-linear rest. b_dec lives in the output's space, so it is not subtracted from the input
(SAELens' apply_b_dec_to_input false).

The activation is TopK with `k`, as sparsify (EleutherAI, `transcode`) and Paulo et al. train them:
it needs no penalty to tune, and it keeps the TopK recipe that trains best here (unit-norm decoder
rows, AuxK on the target's residual: engine.sae.topk). SAELens 6.54 loads them as its `transcoder`
and `skip_transcoder` (engine.sae.export_saelens), whose encoder is a ReLU: the weights, the skip and
the decoder are the same, but a user of that export must keep each token's top k (cfg `k`) to get
the codes trained here.
"""
from engine.models.hooks import MLP_IN, MLP_OUT
from engine.sae.registry import register
from engine.sae.topk import TopK


@register
class Transcoder(TopK):
    name = "transcoder"
    saelens_name = "transcoder"
    apply_b_dec_to_input = False
    input_point, target_point = MLP_IN, MLP_OUT
    # Adam moves each weight by about the learning rate a step, so a small encoder adapts fast
    # (topk's reasoning); the encoder is not tied to the decoder here, the scale only sets its size.
    encoder_init_scale = 0.3

    def saelens_config(self, sae):
        return {"k": int(sae.k), "d_out": int(sae.d_out)}


@register
class SkipTranscoder(Transcoder):
    name = "skip_transcoder"
    saelens_name = "skip_transcoder"
    state_keys = frozenset({"W_skip"})
    recognized_by_keys = True

    def setup(self, sae, options):
        import torch
        from torch import nn

        super().setup(sae, options)
        # W_skip [d_out, d_in], SAELens' layout. It starts at zero (sparsify's SparseCoder and Paulo
        # et al. 2025): the run begins as a plain transcoder, and the skip grows only as far as a
        # linear map of the input lowers the error, so no feature is needed for the linear part.
        sae.W_skip = nn.Parameter(torch.zeros(sae.d_out, sae.d_in))

    def skip(self, sae, x):
        return x @ sae.W_skip.T

    def scaled_export_tensors(self, sae, input_scale, output_scale):
        # Trained on s_in x and s_out y: s_out y ~ ... + s_in x W_skip^T, so on raw x and y the skip
        # is W_skip s_in / s_out.
        return {"W_skip": (sae.W_skip * (input_scale / output_scale)).detach().cpu().contiguous()}
