"""CBCN's circulant binary convolution: 4-orientation filters expanded by rotation, binarised with one layer scale.

Liu, Ding, Xia, Zhang, Zhuang, Zhang, Ji, Doermann, "Circulant Binary Convolutional Networks: Enhancing the
Performance of 1-bit DCNNs with Circulant Back Propagation", CVPR 2019, arXiv 1910.10853; details as the official
release (liuchunlei0430/CBCN_Pytorch) has them.

- Filters: a learned P (C_out, C_in, 4, k, k) per layer (stored as (C_out, 4 C_in, k, k), orientation-minor); the
  conv applies W (4 C_out, 4 C_in, k, k) with
  W[4o + j, 4i + ((r + j) mod 4)] = rot_j(P[o, i, r]), rot_j a clockwise rotation by 90 j degrees (the active rotating
  filter of ORN: channels are plane-major, orientation-minor). Only P is stored (4x a plain conv's weights).
- Binarisation: Y = alpha Conv(sign(X), sign(W)), alpha = mean |W| over the layer, a scalar through which the gradient
  flows (`alpha_grad`, the release's); the sign's gradient is Bi-Real's ApproxSign 2 - 2|w| on [-1, 1] for the
  weights as for the activations (`weight_ste="approx_sign"`; "clip": 1[|w| <= 1]).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from methods.binary.layers import BinaryConv2d
from methods.binary.quantizers import Quantizer, approx_sign_grad, binary_sign

__all__ = ["CirculantBinaryConv2d", "LayerScaleApproxSign", "circulant_expand"]

WeightSte = Literal["approx_sign", "clip"]
ORIENTATIONS = 4


def circulant_expand(p: torch.Tensor) -> torch.Tensor:
    """The (4 C_out, 4 C_in, k, k) kernel of the learned (C_out, C_in, 4, k, k) filters `p` (module docstring)."""
    cout, cin, r, kh, kw = p.shape
    if r != ORIENTATIONS or kh != kw:
        raise ValueError(f"circulant filters must be (C_out, C_in, 4, k, k), got {tuple(p.shape)}")
    # output orientation j: every filter rotated clockwise by 90 j degrees, its orientations rolled by j
    per_j = [torch.roll(torch.rot90(p, -j, dims=(3, 4)), shifts=j, dims=2) for j in range(ORIENTATIONS)]
    return torch.stack(per_j, dim=1).reshape(cout * ORIENTATIONS, cin * ORIENTATIONS, kh, kw)


class _LayerSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, approx: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(w)
        ctx.approx = approx
        return binary_sign(w)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (w,) = ctx.saved_tensors
        if ctx.approx:
            return approx_sign_grad(g, w), None
        return g * (w.abs() <= 1).to(g.dtype), None


class LayerScaleApproxSign(Quantizer):
    """CBCN's weights: alpha sign(W) with alpha = mean |W| of the whole layer.

    Args:
        alpha_grad: the gradient flows through alpha (the release) or alpha is a constant.
        weight_ste: the sign's gradient, "approx_sign" (the release: 2 - 2|w| on [-1, 1]) or "clip" (1[|w| <= 1]).
    """

    scaled_signs = True

    def __init__(self, alpha_grad: bool = True, weight_ste: WeightSte = "approx_sign") -> None:
        super().__init__()
        if weight_ste not in ("approx_sign", "clip"):
            raise ValueError(f"CBCN weight_ste must be 'approx_sign' or 'clip', got {weight_ste!r}")
        self.alpha_grad, self.weight_ste = alpha_grad, weight_ste

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        alpha = w.abs().mean()
        if not self.alpha_grad:
            alpha = alpha.detach()
        return alpha * _LayerSign.apply(w, self.weight_ste == "approx_sign")

    def extra_repr(self) -> str:
        return f"alpha_grad={self.alpha_grad}, weight_ste={self.weight_ste}"


class CirculantBinaryConv2d(BinaryConv2d):
    """A binary conv from C_in to C_out *planes* of 4 orientations each (4 C_in -> 4 C_out channels) whose stored
    `weight` is the filter bank P, shape (C_out, 4 C_in, k, k) (P[o, i, r] at [o, 4 i + r]); :meth:`latent_weight`
    expands it (module docstring).

    Args:
        in_planes, out_planes: planes (the conv has 4x as many channels).
        input_quantizer, weight_quantizer: as BinaryConv2d (CBCN: "approx_sign" and LayerScaleApproxSign; None
            keeps that side real).
    """

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        *,
        input_quantizer: str | nn.Module | None = "approx_sign",
        weight_quantizer: nn.Module | None = None,
    ) -> None:
        n = ORIENTATIONS
        super().__init__(
            in_planes * n,
            out_planes * n,
            kernel_size,
            stride,
            padding,
            bias=False,
            input_quantizer=input_quantizer,
            weight_quantizer=weight_quantizer,
        )
        k = kernel_size
        # stored 4-D, (C_out, C_in x 4 orientations, k, k), so that channels_last and every 4-D weight tool apply
        self.weight = nn.Parameter(torch.empty(out_planes, in_planes * n, k, k))
        # Kaiming's fan_out std of the expanded conv it applies (fan_out = 4 C_out k k)
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / (n * out_planes * k * k)))

    def latent_weight(self) -> torch.Tensor:
        w = self.weight
        return circulant_expand(w.reshape(w.shape[0], -1, ORIENTATIONS, w.shape[2], w.shape[3]))
