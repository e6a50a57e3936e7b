"""ABC-Net's multiple binary bases: M weight bases fitted by least squares and N shifted activation bases.

Lin, Zhao, Pan, "Towards Accurate Binary Convolutional Neural Network", NeurIPS 2017, arXiv 1711.11294.

- Weights (per layer, or per output filter with `scope="channel"`): W_c = W - mean(W); the bases are
  B_m = sign(W_c + u_m std(W)), u_m = -1 + 2(m - 1)/(M - 1) (u_1 = 0 for M = 1); alpha in R^M solves
  min ||vec(W) - sum_m alpha_m vec(B_m)||^2. It is refitted in every training forward and frozen (a buffer) at eval.
  Gradient: dL/dW = sum_m alpha_m dL/dB_m, dL/dB_m the gradient w.r.t. the kernel of the unscaled conv of B_m (the
  paper's Sec. 3.1 chain rule through O = sum_m alpha_m Conv(B_m, A)), an identity straight-through on each sign;
  alpha a constant.
- Activations: A_n = sign(clip(x + v_n, 0, 1) - 0.5) (values +-1, sign(0) = +1: A_n = +1 iff x >= 0.5 - v_n), with
  trainable shifts v_n and weights beta_n; gradient 1[0 <= x + v_n <= 1] (straight-through the clip), to x and v_n.
  Initialisation (inferred, the paper's is not known here): thresholds 0.5 - v_n spread evenly over (-1, 1),
  -1 + 2n/(N + 1) for n = 1..N (N = 1: v = 0.5, plain sign), and beta_n = 1/N.
- The layer: Conv(W, R) ~ sum_m sum_n alpha_m beta_n Conv(B_m, A_n). Convolution is bilinear, so this equals
  Conv(sum_m alpha_m B_m, sum_n beta_n A_n), which :class:`ABCConv2d` computes as one conv (same values, M x N times
  fewer simulated MACs); the cost counter counts the M x N binary convs (the quantizers' `planes`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from methods.binary.layers import BinaryConv2d
from methods.binary.quantizers import Quantizer, binary_sign

__all__ = ["ABCConv2d", "MultiBaseWeight", "MultiShiftActivation", "weight_shifts"]

Scope = Literal["layer", "channel"]


def weight_shifts(m: int) -> torch.Tensor:
    """The M base offsets u_m = -1 + 2(m - 1)/(M - 1) in units of std(W) (u = 0 for M = 1)."""
    return torch.zeros(1) if m == 1 else torch.linspace(-1.0, 1.0, m)


def _fit_alpha(w: torch.Tensor, bases: torch.Tensor, ridge: float = 1e-8) -> torch.Tensor:
    """Least-squares alpha (G, M) for w (G, n) and bases (M, G, n): the M x M normal equations in float64."""
    b = bases.permute(1, 2, 0).double()  # (G, n, M)
    gram = b.transpose(1, 2) @ b + ridge * torch.eye(b.shape[-1], dtype=b.dtype, device=b.device)
    rhs = b.transpose(1, 2) @ w.double().unsqueeze(-1)  # (G, M, 1)
    return torch.linalg.solve(gram, rhs).squeeze(-1).to(w.dtype)


class MultiBaseWeight(Quantizer):
    """W_hat = sum_m alpha_m B_m: ABC-Net's M binary weight bases with least-squares alpha (see the module docstring).

    Args:
        bases: M.
        scope: "layer" (one alpha per base per layer, ABC-Net's reading here) or "channel" (per output filter).
        out_channels: the conv's output filters (the shape of the stored alpha with `scope="channel"`).
    """

    def __init__(self, bases: int = 1, scope: Scope = "layer", out_channels: int = 1) -> None:
        super().__init__()
        if bases < 1:
            raise ValueError(f"ABC-Net weight bases M must be >= 1, got {bases}")
        if scope not in ("layer", "channel"):
            raise ValueError(f"ABC-Net stat scope must be 'layer' or 'channel', got {scope!r}")
        self.planes = bases
        self.scope = scope
        self.u: torch.Tensor
        self.alpha: torch.Tensor
        self.register_buffer("u", weight_shifts(bases), persistent=False)
        groups = out_channels if scope == "channel" else 1
        self.register_buffer("alpha", torch.zeros(groups, bases))  # the last training forward's fit (used at eval)

    def bases(self, w: torch.Tensor) -> torch.Tensor:
        """The M sign bases of `w`, shape (M, *w.shape), without gradient."""
        flat = w.detach().flatten(1) if self.scope == "channel" else w.detach().reshape(1, -1)
        mean = flat.mean(dim=1, keepdim=True)
        std = flat.std(dim=1, keepdim=True) if flat.shape[1] > 1 else torch.zeros_like(mean)
        b = binary_sign((flat - mean).unsqueeze(0) + self.u.to(w.dtype).view(-1, 1, 1) * std)
        return b.reshape(self.planes, *w.shape)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        groups = w.shape[0] if self.scope == "channel" else 1
        b = self.bases(w)
        if self.training or not bool(self.alpha.any()):  # never fitted (a fresh model evaluated): fit now
            alpha = _fit_alpha(w.detach().reshape(groups, -1), b.reshape(self.planes, groups, -1))  # (G, M)
            if self.training:
                self.alpha = alpha.detach()
        else:
            alpha = self.alpha.to(w.dtype)
        shape = (self.planes, groups) + (1,) * (w.dim() - 1)
        coef = alpha.t().reshape(shape)  # (M, G, 1, 1, 1)
        w_hat = (coef * b).sum(0)
        # identity straight-through on every base: dL/dW = sum_m alpha_m dL/dB_m
        ste = coef.sum(0) * (w - w.detach())
        return w_hat + ste

    def extra_repr(self) -> str:
        return f"bases={self.planes}, scope={self.scope}"


class _ShiftedBinarize(torch.autograd.Function):
    """A_n = sign(clip(x + v_n, 0, 1) - 0.5) for v (N,): output (N, *x.shape); gradient 1[0 <= x + v_n <= 1]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        shifted = x.unsqueeze(0) + v.view(-1, *([1] * x.dim()))
        ctx.save_for_backward(shifted)
        return binary_sign(shifted - 0.5)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        (shifted,) = ctx.saved_tensors
        gm = g * ((shifted >= 0) & (shifted <= 1)).to(g.dtype)
        return gm.sum(0), gm.flatten(1).sum(1)


class MultiShiftActivation(Quantizer):
    """ABC-Net's N shifted binary activations A_n (values +-1), stacked on a new first dimension; :meth:`combine`
    gives R_hat = sum_n beta_n A_n. v_n and beta_n are trainable (one scalar each per layer)."""

    signs_only = True

    def __init__(self, bases: int = 1) -> None:
        super().__init__()
        if bases < 1:
            raise ValueError(f"ABC-Net activation bases N must be >= 1, got {bases}")
        self.planes = bases
        thresholds = -1.0 + 2.0 * torch.arange(1, bases + 1) / (bases + 1)
        self.shift = nn.Parameter(0.5 - thresholds)
        self.beta = nn.Parameter(torch.full((bases,), 1.0 / bases))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ShiftedBinarize.apply(x, self.shift.to(x.dtype))

    def combine(self, a: torch.Tensor) -> torch.Tensor:
        """sum_n beta_n A_n for the stack `a` of :meth:`forward`."""
        return (self.beta.to(a.dtype).view(-1, *([1] * (a.dim() - 1))) * a).sum(0)

    def extra_repr(self) -> str:
        return f"bases={self.planes}"


class ABCConv2d(BinaryConv2d):
    """ABC-Net's approximated conv: sum_m sum_n alpha_m beta_n Conv(B_m, A_n), as one conv of the combined operands
    (module docstring). Padding is 0 on the combined input (0 in every Conv(B_m, A_n): the usual zero border)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        *,
        weight_bases: int = 1,
        activation_bases: int = 1,
        scope: Scope = "layer",
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            bias=False,
            input_quantizer=MultiShiftActivation(activation_bases),
            weight_quantizer=MultiBaseWeight(weight_bases, scope, out_channels),
        )

    def forward(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        q = self.input_quantizer
        assert isinstance(q, MultiShiftActivation)
        r = q.combine(q(x))
        y = F.conv2d(r, self.quantized_weight(), None, self.stride, self.padding, self.dilation, self.groups)
        return F.relu_(y) if relu else y
