"""TopK SAE: keep the k largest pre-activations per token, then relu (Gao et al. 2024, OpenAI,
"Scaling and evaluating sparse autoencoders"); no sparsity term, decoder rows at unit norm, and the
AuxK loss to revive dead latents. Its codes have k non-zeros a token, so the decoder may run as a
gather of k rows (the trainer times both ways on the first batch)."""
import math

from engine.sae.registry import Architecture, RequestField, register

K = RequestField("k", int, help="Active features per token", about="active features per token",
                 required=True, api_minimum=1)


@register
class TopK(Architecture):
    name = "topk"
    saelens_name = "topk"
    request_fields = (K,)
    unit_norm_decoder = True
    # Adam moves each weight by about the learning rate per step, so a smaller encoder adapts
    # faster relative to its size: at 0.3x the transpose our short runs matched SAELens' explained
    # variance (whose 0.1-norm init it approaches), where 1x trailed by 0.02-0.05 (bench/RESULTS.md).
    encoder_init_scale = 0.3
    sparse_decode = True
    recognized_by_keys = False  # a topk state dict has relu's keys

    def check_request(self, values, *, hidden_dim):
        if values["k"] > hidden_dim:
            return f"k: {values['k']} is more than hidden_dim ({hidden_dim})."
        return None

    def setup(self, sae, options):
        sae.k = min(int(options["k"]), sae.d_sae)

    def options(self, sae):
        return {"k": sae.k}

    def activate(self, sae, pre):
        values, indices = pre.topk(sae.k, dim=-1)
        return pre.new_zeros(pre.shape).scatter(-1, indices, values.relu())

    def sparse_code(self, sae, pre):
        values, indices = pre.float().topk(sae.k, dim=-1)
        return values.relu(), indices

    def sparsity_loss(self, sae, pre, f, config):
        return pre.new_zeros(())

    def aux_loss(self, sae, x, recon, pre, trainer):
        """AuxK (Gao et al. 2024, section A.2): reconstruct the main model's residual with the top
        k_aux dead latents, so dead latents get a gradient that points them at what the live ones
        miss. Weighted by aux_k_coeff; k_aux defaults to half the output width (d_in for an SAE)."""
        config = trainer.config
        if config.aux_k_coeff <= 0:
            return None
        dead = trainer.dead_mask()
        n_dead = int(dead.sum().item())
        if n_dead == 0:
            return pre.new_zeros(())
        k_aux = min(config.aux_k or max(1, sae.d_out // 2), n_dead)
        values, indices = pre.masked_fill(~dead, -math.inf).topk(k_aux, dim=-1)
        z_aux = pre.new_zeros(pre.shape).scatter(-1, indices, values.relu())
        from torch.nn.functional import mse_loss

        return config.aux_k_coeff * mse_loss(z_aux @ sae.W_dec, (x - recon).detach())

    def saelens_config(self, sae):
        return {"k": int(sae.k)}
