"""ReLU SAE: f = relu(pre), with the decoder-norm-weighted L1 as its sparsity term and dead
features resampled in the first half of training (Bricken et al. 2023, "Towards Monosemanticity";
Anthropic, "Circuits Updates - April 2024"). Decoder norms stay free: the weighted L1 removes the
incentive to shrink f by growing W_dec. The encoder bias learns fast enough to reach its level in
any run (Architecture.param_groups). With target_l0 the trainer adapts the L1's weight toward
that L0 (engine.trainer.target_l0)."""
from engine.sae.registry import TARGET_L0, Architecture, register

# Bricken et al. 2023 resample dead neurons with encoder rows at 0.2x the mean live encoder norm.
_RESAMPLE_ENCODER_SCALE = 0.2


@register
class ReLU(Architecture):
    name = "relu"
    request_fields = (TARGET_L0,)
    adapts_l1_to_target_l0 = True
    fast_biases = ("b_enc",)

    def after_step(self, sae, x, recon, trainer) -> None:
        if trainer.config.resample_dead and trainer.state.step < trainer.total_steps // 2:
            resample_dead(sae, x, recon.detach(), trainer)


def resample_dead(sae, x, recon, trainer) -> None:
    """Resampling (Bricken et al. 2023): a feature silent for dead_window_tokens gets a decoder row
    pointing at a badly reconstructed input (drawn with probability proportional to its squared
    loss), an encoder column along it at 0.2x the mean live encoder norm, a zero bias and fresh
    Adam moments. Only in the first half of training, so every resampled feature has time to settle.
    Data-parallel: rank 0 draws from its shard and broadcasts; the rest is the same on every rank."""
    import torch

    with torch.no_grad():
        dead = trainer.dead_mask()
        if not dead.any():
            return
        n_dead = int(dead.sum().item())
        parallel = trainer.parallel
        if parallel is None or parallel.rank == 0:
            losses = ((x - recon) ** 2).sum(dim=1) ** 2
            weights = losses if losses.sum() > 0 else torch.ones_like(losses)
            picks = torch.multinomial(weights, n_dead, replacement=True)
            directions = x[picks] - sae.b_dec
            directions /= directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            directions = x.new_empty(n_dead, x.shape[1])
        if parallel is not None:
            parallel.broadcast_(directions)
        alive = ~dead
        dec_norm = sae.W_dec.norm(dim=1)[alive].mean() if alive.any() else torch.tensor(1.0, device=x.device)
        enc_norm = sae.W_enc.norm(dim=0)[alive].mean() if alive.any() else torch.tensor(1.0, device=x.device)
        sae.W_dec[dead] = directions * dec_norm
        sae.W_enc[:, dead] = directions.T * (_RESAMPLE_ENCODER_SCALE * enc_norm)
        sae.b_enc[dead] = 0.0
        for param in (sae.W_dec, sae.W_enc, sae.b_enc):
            for moment in ("exp_avg", "exp_avg_sq"):
                tensor = trainer.optimizer.state.get(param, {}).get(moment)
                if tensor is not None:
                    if param is sae.W_enc:
                        tensor[:, dead] = 0.0
                    else:
                        tensor[dead] = 0.0
        trainer.state.tokens_since_fired[dead] = 0
        trainer.state.resampled_features += n_dead
