"""Sparse autoencoders with SAELens-style parameter names and shapes.

Every architecture shares
    pre = (x - b_dec) @ W_enc + b_enc,   x_hat = f @ W_dec + b_dec
with W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]; they differ in how
the code f is taken from the pre-activations and in the sparsity term of the loss:

- relu:      f = relu(pre); L1 weighted by decoder norms.
- topk:      keep the k largest pre-activations per token, then relu (Gao et al. 2024, OpenAI,
             "Scaling and evaluating sparse autoencoders"); no sparsity term.
- batchtopk: while training keep the k*B largest over a batch of B tokens (Bussmann et al. 2024,
             arXiv 2412.06410); at inference a JumpReLU with the buffer `threshold`, a running
             estimate of the smallest activation training kept.
- jumprelu:  f = pre * (pre > threshold) with learned per-feature thresholds and an L0 penalty,
             both trained through straight-through estimators (Rajamanoharan et al. 2024, Gemma
             Scope, arXiv 2408.05147; Anthropic, "Circuits Updates - January 2025").
"""

import math

import torch
from torch import nn

from engine.errors import EngineError

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu")

# BatchTopK's threshold is an exponential moving average of the smallest kept activation;
# a negative value marks "not yet estimated" (encode then lets every positive activation through).
_THRESHOLD_EMA_DECAY = 0.99


class SparseAutoencoder(nn.Module):
    encoder_init_scale = 1.0
    """The ReLU SAE, and the base class holding everything the architectures share."""

    architecture = "relu"
    # Whether the trainer keeps decoder rows at unit norm (and drops the parallel gradient).
    unit_norm_decoder = False

    def __init__(self, d_in: int, d_sae: int):
        super().__init__()
        self.d_in = d_in
        self.d_sae = d_sae
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_activations(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encode(x)
        return self.decode(f), f

    def decoder_norms(self) -> torch.Tensor:
        return self.W_dec.norm(dim=1)

    def weighted_l1(self, f: torch.Tensor) -> torch.Tensor:
        """Mean over tokens of sum_i f_i * ||W_dec,i||.

        Weighting by decoder norms makes the penalty invariant to rescaling a feature (shrinking
        f_i while growing its decoder row no longer lowers the loss), which replaces the unit-norm
        decoder constraint (Anthropic, "Circuits Updates - April 2024").
        """
        return (f * self.decoder_norms()).sum(dim=-1).mean()

    def sparsity_loss(self, pre: torch.Tensor, f: torch.Tensor, *, target_l0: float | None = None) -> torch.Tensor:
        """The term the trainer multiplies by sparsity_coeff."""
        return self.weighted_l1(f)

    def extra_state_for_export(self) -> dict[str, torch.Tensor]:
        """Tensors besides the four weights an exported SAE needs (SAELens names)."""
        return {}

    @torch.no_grad()
    def initialize_(self, sample: torch.Tensor, generator: torch.Generator | None = None, *, b_dec: torch.Tensor | None = None) -> None:
        """Random unit-norm decoder rows, encoder = decoder transpose, b_dec = given centre or data mean.

        Tied initialisation of W_enc as W_dec.T starts every feature as a matched
        detector/writer pair (Anthropic, "Circuits Updates - April 2024"; Gao et al. 2024).
        The trainer passes the geometric median as b_dec (Bricken et al. 2023, "Towards
        Monosemanticity"); the mean is the fallback.
        """
        directions = torch.randn(self.d_sae, self.d_in, generator=generator, device="cpu")
        directions /= directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_dec.copy_(directions.to(self.W_dec.device))
        self.W_enc.copy_(self.W_dec.T * self.encoder_init_scale)
        self.b_enc.zero_()
        centre = b_dec if b_dec is not None else sample.to(torch.float32).mean(dim=0)
        self.b_dec.copy_(centre.to(self.b_dec.device, torch.float32))

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale decoder rows to unit norm (for the constrained-decoder recipe)."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Drop the gradient component parallel to each decoder row.

        With unit-norm decoder rows this keeps Adam from fighting the renormalisation after every
        step (Bricken et al. 2023, "Towards Monosemanticity").
        """
        if self.W_dec.grad is None:
            return
        unit = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        parallel = (self.W_dec.grad * unit).sum(dim=1, keepdim=True)
        self.W_dec.grad -= parallel * unit

    @classmethod
    def from_state_dict(cls, state_dict: dict, **kwargs) -> "SparseAutoencoder":
        d_in, d_sae = state_dict["W_enc"].shape
        sae = cls(d_in, d_sae, **kwargs)
        names = set(sae.state_dict())
        sae.load_state_dict({k: v.to(torch.float32) for k, v in state_dict.items() if k in names})
        return sae


class TopKSAE(SparseAutoencoder):
    architecture = "topk"
    # Adam moves each weight by about the learning rate per step, so a smaller encoder adapts
    # faster relative to its size: at 0.3x the transpose our short runs matched SAELens' explained
    # variance (whose 0.1-norm init it approaches), where 1x trailed by 0.02-0.05 (bench/RESULTS.md).
    encoder_init_scale = 0.3
    # Gao et al. 2024 keep decoder rows at unit norm; TopK needs no sparsity penalty to push against.
    unit_norm_decoder = True

    def __init__(self, d_in: int, d_sae: int, *, k: int):
        super().__init__(d_in, d_sae)
        self.k = min(int(k), d_sae)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        values, indices = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))

    def sparsity_loss(self, pre, f, *, target_l0=None):
        return pre.new_zeros(())


class BatchTopKSAE(TopKSAE):
    architecture = "batchtopk"

    def __init__(self, d_in: int, d_sae: int, *, k: int):
        super().__init__(d_in, d_sae, k=k)
        self.register_buffer("threshold", torch.tensor(-1.0))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return torch.relu(pre) * (pre > self.threshold)
        flat = torch.relu(pre).flatten()
        values, indices = flat.topk(min(self.k * pre.shape[0], flat.numel()))
        f = torch.zeros_like(flat).scatter(0, indices, values).view_as(pre)
        self._update_threshold(values)
        return f

    @torch.no_grad()
    def _update_threshold(self, kept: torch.Tensor) -> None:
        positive = kept[kept > 0]
        if positive.numel() == 0:
            return
        smallest = positive.min()
        if self.threshold < 0:
            self.threshold.copy_(smallest)
        else:
            self.threshold.mul_(_THRESHOLD_EMA_DECAY).add_((1 - _THRESHOLD_EMA_DECAY) * smallest)

    def extra_state_for_export(self):
        return {"threshold": self.threshold.detach().clamp_min(0).expand(self.d_sae).clone()}


class _JumpReLU(torch.autograd.Function):
    """z * H(z - t): the gradient wrt z passes where the unit is on; the gradient wrt t comes from
    a rectangle kernel of width `bandwidth` around the jump (Gemma Scope, eq. 11)."""

    @staticmethod
    def forward(ctx, z, threshold, bandwidth):
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold)

    @staticmethod
    def backward(ctx, grad):
        z, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        near = ((z - threshold).abs() < bw / 2).to(z.dtype)
        grad_z = grad * (z > threshold)
        grad_t = (-(threshold / bw) * near * grad).sum(dim=0)
        return grad_z, grad_t, None


class _Step(torch.autograd.Function):
    """H(z - t), with the straight-through gradient -1/bandwidth * rect((z - t)/bandwidth) wrt t
    only, which gives the L0 penalty a gradient (Gemma Scope, eq. 12)."""

    @staticmethod
    def forward(ctx, z, threshold, bandwidth):
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        near = ((z - threshold).abs() < bw / 2).to(z.dtype)
        return torch.zeros_like(z), (-(1.0 / bw) * near * grad).sum(dim=0), None


class JumpReLUSAE(SparseAutoencoder):
    architecture = "jumprelu"
    # Gemma Scope keeps decoder rows at unit norm: with an L0 penalty, feature scale is free otherwise.
    unit_norm_decoder = True

    def __init__(self, d_in: int, d_sae: int, *, initial_threshold: float = 0.1, bandwidth: float = 0.05):
        super().__init__(d_in, d_sae)
        self.bandwidth = float(bandwidth)
        # Thresholds are learned as logs so they stay positive (Gemma Scope). Inputs have mean
        # norm sqrt(d_in), so pre-activations are O(1); an initial 0.1 (Anthropic Jan 2025) and a
        # 0.05 kernel let short runs move them, where Gemma Scope's 0.001/0.001 needs billions of tokens.
        self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(initial_threshold)))

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        # The relu matches SAELens' jumprelu; with a positive threshold it changes nothing.
        return _JumpReLU.apply(torch.relu(pre), self.threshold, self.bandwidth)

    def l0(self, pre: torch.Tensor) -> torch.Tensor:
        """Mean over tokens of the number of active features, differentiable wrt the thresholds."""
        return _Step.apply(pre, self.threshold, self.bandwidth).sum(dim=-1).mean()

    def sparsity_loss(self, pre, f, *, target_l0=None):
        l0 = self.l0(pre)
        if target_l0:
            return (l0 / target_l0 - 1) ** 2
        return l0

    def extra_state_for_export(self):
        return {"threshold": self.threshold.detach().clone()}


_CLASSES = {"relu": SparseAutoencoder, "topk": TopKSAE, "batchtopk": BatchTopKSAE, "jumprelu": JumpReLUSAE}


def build_sae(
    architecture: str,
    d_in: int,
    d_sae: int,
    *,
    k: int | None = None,
    jumprelu_initial_threshold: float = 0.1,
    jumprelu_bandwidth: float = 0.05,
) -> SparseAutoencoder:
    if architecture not in _CLASSES:
        raise EngineError(f"architecture must be one of {', '.join(ARCHITECTURES)}, not '{architecture}'")
    if architecture in ("topk", "batchtopk"):
        if k is None or int(k) < 1:
            raise EngineError(f"k must be a positive integer for the {architecture} architecture")
        return _CLASSES[architecture](d_in, d_sae, k=int(k))
    if architecture == "jumprelu":
        return JumpReLUSAE(d_in, d_sae, initial_threshold=jumprelu_initial_threshold, bandwidth=jumprelu_bandwidth)
    return SparseAutoencoder(d_in, d_sae)


def sae_from_state_dict(state_dict: dict, *, architecture: str | None = None, k: int | None = None) -> SparseAutoencoder:
    """Rebuild any architecture from its state dict. Without `architecture` it is read from the
    keys (log_threshold: jumprelu, threshold: batchtopk, else relu); topk must be named."""
    if architecture is None:
        architecture = "jumprelu" if "log_threshold" in state_dict else "batchtopk" if "threshold" in state_dict else "relu"
    d_in, d_sae = state_dict["W_enc"].shape
    sae = build_sae(architecture, int(d_in), int(d_sae), k=k)
    sae.load_state_dict({name: v.to(torch.float32) for name, v in state_dict.items()})
    return sae
