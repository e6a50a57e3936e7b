"""ReActNet's building blocks: RSign and RPReLU (learnable per-channel shifts) and its detached-scale sign weights.

Liu, Shen, Savvides, Cheng, "ReActNet: Towards Precise Binary Neural Network with Generalized Activation Functions",
ECCV 2020, arXiv 2003.03488. Read in the official release (liuzechun/ReActNet) for the details the paper leaves open:

- RSign: x_b = sign(x + b_c), one learnable shift b per input channel (a threshold -b); the backward is Bi-Real's
  ApproxSign derivative 2 - 2|x + b| on [-1, 1] (zero outside), w.r.t. both x and b.
- RPReLU: y = PReLU_c(x + g_c) + z_c, learnable shifts g and z and a PReLU slope per channel.
- Weights: s_o * sign(W), s_o = mean |W_o| over (C_in, kh, kw) per output filter, **detached** (no gradient through
  the scale), with the clamp STE dL/dW = dL/dW_b * 1[|W| <= 1].

Convention: sign(0) = +1 here; the release's torch.sign gives 0 there (a ternary value on exact zeros, which a
continuous input and a learned shift make measure-zero).
"""

from __future__ import annotations

import torch
from torch import nn

from methods.binary.quantizers import Quantizer, approx_sign_grad, binary_sign

__all__ = ["RPReLU", "RSign", "ScaledSignWeight"]


class _ShiftedApproxSign(torch.autograd.Function):
    """sign(x + b) with the ApproxSign gradient at x + b, for x (N, C, H, W) and b (C,)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        shifted = x + b.view(1, -1, 1, 1)
        ctx.save_for_backward(shifted)
        return binary_sign(shifted)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        (shifted,) = ctx.saved_tensors
        gx = approx_sign_grad(g, shifted)
        return gx, gx.sum(dim=(0, 2, 3))


class RSign(Quantizer):
    """ReActNet's RSign: sign(x + b_c) with a learnable shift per input channel (initialised 0: plain sign).

    Its output is exactly +-1 (`signs_only`: the int8 CPU path can take it); the sign is not fused into the conv
    (`fuses_sign` False), since the shift needs its gradient from autograd.
    """

    signs_only = True

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ShiftedApproxSign.apply(x, self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"channels={self.bias.numel()}"


class RPReLU(nn.Module):
    """ReActNet's RPReLU: PReLU_c(x + g_c) + z_c with learnable per-channel shifts g, z (initialised 0) and slopes
    (initialised 0.25, torch's PReLU default)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(channels))
        self.prelu = nn.PReLU(channels)
        self.shift_out = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(x + self.shift_in.view(1, -1, 1, 1)) + self.shift_out.view(1, -1, 1, 1)


class _ScaledSignFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(w)
        scale = w.abs().mean(dim=(1, 2, 3), keepdim=True)  # detached: no gradient through the scale
        return scale * binary_sign(w)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (w,) = ctx.saved_tensors
        return g * (w.abs() <= 1.0).to(g.dtype)


class ScaledSignWeight(Quantizer):
    """ReActNet's weight binarisation: s_o * sign(W), s_o = mean |W_o| per output filter (detached), with the
    clamp STE (gradient passed where |W| <= 1). +-s_o per filter: `scaled_signs` (int8-eligible)."""

    scaled_signs = True

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _ScaledSignFn.apply(w)
