"""A ReLU sparse autoencoder with SAELens-style parameter names and shapes.

f = relu((x - b_dec) @ W_enc + b_enc),  x_hat = f @ W_dec + b_dec
"""

import torch
from torch import nn


class SparseAutoencoder(nn.Module):
    def __init__(self, d_in: int, d_sae: int):
        super().__init__()
        self.d_in = d_in
        self.d_sae = d_sae
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

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

    @torch.no_grad()
    def initialize_(self, sample: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Random unit-norm decoder rows, encoder = decoder transpose, b_dec = data mean.

        Tied initialisation of W_enc as W_dec.T starts every feature as a matched
        detector/writer pair (Anthropic, "Circuits Updates - April 2024"); b_dec at the data mean
        centres the encoder input (Bricken et al. 2023, "Towards Monosemanticity", which uses the
        geometric median; the mean is a cheap stand-in).
        """
        directions = torch.randn(self.d_sae, self.d_in, generator=generator, device="cpu")
        directions /= directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_dec.copy_(directions.to(self.W_dec.device))
        self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()
        self.b_dec.copy_(sample.to(self.b_dec.device, torch.float32).mean(dim=0))

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale decoder rows to unit norm (for the constrained-decoder recipe)."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Drop the gradient component parallel to each decoder row.

        With unit-norm decoder rows and a plain L1 penalty, this keeps Adam from fighting the
        renormalisation after every step (Bricken et al. 2023, "Towards Monosemanticity").
        Not used by engine.trainer, which follows the decoder-norm-weighted L1 recipe instead.
        """
        if self.W_dec.grad is None:
            return
        unit = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        parallel = (self.W_dec.grad * unit).sum(dim=1, keepdim=True)
        self.W_dec.grad -= parallel * unit

    @classmethod
    def from_state_dict(cls, state_dict: dict) -> "SparseAutoencoder":
        d_in, d_sae = state_dict["W_enc"].shape
        sae = cls(d_in, d_sae)
        sae.load_state_dict({k: v.to(torch.float32) for k, v in state_dict.items() if k in ("W_enc", "b_enc", "W_dec", "b_dec")})
        return sae
