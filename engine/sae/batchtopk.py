"""BatchTopK SAE: while training keep the k*B largest activations over a batch of B tokens
(Bussmann et al. 2024, arXiv 2412.06410); at inference a JumpReLU with the buffer `threshold`, a
running estimate of the smallest activation training kept. Exported to SAELens as a jumprelu with
that threshold, which is exactly how it encodes outside training."""
from engine.errors import EngineError
from engine.sae.registry import register
from engine.sae.topk import TopK

# The threshold is an exponential moving average of the smallest kept activation; a negative value
# marks "not yet estimated" (encode then lets every positive activation through).
_THRESHOLD_EMA_DECAY = 0.99


@register
class BatchTopK(TopK):
    name = "batchtopk"
    saelens_name = "jumprelu"
    sparse_decode = False  # the count per token varies
    state_keys = frozenset({"threshold"})
    recognized_by_keys = True

    def setup(self, sae, options):
        import torch

        super().setup(sae, options)
        sae.register_buffer("threshold", torch.tensor(-1.0))

    def activate(self, sae, pre):
        if not sae.training:
            return pre.relu() * (pre > sae.threshold)
        flat = pre.relu().flatten()
        values, indices = flat.topk(min(sae.k * pre.shape[0], flat.numel()))
        f = flat.new_zeros(flat.shape).scatter(0, indices, values).view_as(pre)
        _update_threshold(sae, values)
        return f

    def loadable_state(self, state_dict):
        """An export carries the threshold per feature, as SAELens' jumprelu does (every entry the
        same): the module keeps it as one number."""
        state = dict(state_dict)
        threshold = state.get("threshold")
        if threshold is not None and threshold.ndim == 1:
            if not bool((threshold == threshold[0]).all()):
                raise EngineError("This threshold differs between features: it is a jumprelu SAE's, not a batchtopk's")
            state["threshold"] = threshold[0].clone()
        return state

    def export_tensors(self, sae):
        return {"threshold": sae.threshold.detach().clamp_min(0).expand(sae.d_sae).clone()}

    def saelens_config(self, sae):
        return {}


def _update_threshold(sae, kept) -> None:
    import torch

    with torch.no_grad():
        positive = kept[kept > 0]
        if positive.numel() == 0:
            return
        smallest = positive.min()
        if sae.threshold < 0:
            sae.threshold.copy_(smallest)
        else:
            sae.threshold.mul_(_THRESHOLD_EMA_DECAY).add_((1 - _THRESHOLD_EMA_DECAY) * smallest)
