"""Straight-through estimators for architectures with a jump (JumpReLU; Rajamanoharan et al. 2024,
Gemma Scope, arXiv 2408.05147): the forward is exact, the gradient with respect to the threshold
comes from a rectangle kernel of width `bandwidth` around the jump."""
import torch


class JumpReLUFunction(torch.autograd.Function):
    """z * H(z - t): the gradient wrt z passes where the unit is on; the gradient wrt t comes from
    the kernel (Gemma Scope, eq. 11)."""

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


class StepFunction(torch.autograd.Function):
    """H(z - t), with the straight-through gradient -1/bandwidth * rect((z - t)/bandwidth) wrt t
    only, which gives an L0 penalty a gradient (Gemma Scope, eq. 12)."""

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
