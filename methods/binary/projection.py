"""PCNN's projection quantizer and the closed-form gradients of its projection loss.

Gu, Li, Zhang, Han, Cao, Liu, Doermann, "Projection Convolutional Neural Networks for 1-bit CNNs via Discrete Back
Propagation", AAAI 2019, arXiv 1811.12755; the equations below are those of the authors' book chapter (Zhang et al.,
*Binary Neural Networks*, Sec. 3.5, eqs. 3.45-3.61), which covers the extended version.

- Latent kernel C (C_out, C_in, k, k) and one learned k x k projection matrix W per layer (J = 1 projection; the
  paper's J > 1 concatenates J projected kernels into J-fold channels and is not implemented), duplicated over
  (C_out, C_in) as W~.
- Binary projection onto {-a, +a}, a = mean |C| over the layer (eq. 3.57): C^ = a sign(W~ o C). The forward uses the
  mean of W ("the mean of W in the forward pass, the full W in the backward pass"): C^ = a sign(mean(W) C).
- Ternary projection onto {-D, 0, +D} (the progressive stage, "pretraining" in the poster's table), TWN's rule on
  u = mean(W) C: t = sign(u) 1[|u| > 0.7 mean |u|], D = mean |C| over the kept entries. INFERRED: the book names TWN's
  threshold rule; which quantity it is applied to (u here) is our reading.
- Backward, with u = W~ o C and the indicator 1[|u| <= 1] (eqs. 3.52-3.56): dL/dC = dL/dC^ o 1[|u| <= 1] o W~ and
  dL/dW = sum over (C_out, C_in) of dL/dC^ o 1[|u| <= 1] o C. The scale a (or D) is a constant. UNVERIFIED: the
  exact form of dL/dC (the spec only says it uses the same indicator).
- Projection loss L_P = lam/2 sum ||C^ - W~ o (C + eta dC^)||^2 with dC^ = dL_S/dC^ of the same step and eta the
  current lr, C^ and dC^ constants (eqs. 3.49-3.56): see :func:`projection_loss_grads`.
"""

from __future__ import annotations

import torch
from torch import nn

from methods.binary.quantizers import Quantizer, binary_sign

__all__ = ["ProjectionWeight", "projection_loss_grads", "projection_params", "TWN_THRESHOLD"]

TWN_THRESHOLD = 0.7  # Li & Liu, "Ternary Weight Networks" (2016): Delta = 0.7 mean |w|


class _ProjectFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, c: torch.Tensor, w: torch.Tensor, levels: int) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(c, w)
        u = w.mean() * c
        if levels == 2:
            return c.abs().mean() * binary_sign(u)
        keep = u.abs() > TWN_THRESHOLD * u.abs().mean()
        d = (c.abs() * keep).sum() / keep.sum().clamp_min(1)
        return d * binary_sign(u) * keep

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:  # type: ignore[override]
        c, w = ctx.saved_tensors
        mask = ((w * c).abs() <= 1.0).to(g.dtype)  # W~ o C: w (k, k) broadcasts over (C_out, C_in)
        gm = g * mask
        return gm * w, (gm * c).sum(dim=(0, 1)), None


class ProjectionWeight(Quantizer):
    """PCNN's weight quantizer (module docstring): C^ = a sign(mean(W) C) with a learned k x k projection matrix W
    (initialised to ones), or the ternary projection with `levels=3`.

    In training it keeps the last projected kernel (`last`) with its gradient retained, which the projection loss's
    update reads after the backward pass (:func:`projection_loss_grads`)."""

    def __init__(self, kernel_size: int = 3, levels: int = 2) -> None:
        super().__init__()
        if levels not in (2, 3):
            raise ValueError(f"ProjectionWeight: levels must be 2 (binary) or 3 (ternary), got {levels}")
        self.levels = levels
        self.proj = nn.Parameter(torch.ones(kernel_size, kernel_size))
        self.last: torch.Tensor | None = None
        if levels == 3:  # {-D, 0, +D}: two binary planes per weight, 2 bits stored
            self.bit_width, self.planes, self.alphabet = 2, 2, (-1.0, 0.0, 1.0)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        if c.shape[-2:] != self.proj.shape:
            raise ValueError(
                f"ProjectionWeight: kernel {tuple(c.shape[-2:])}, projection matrix {tuple(self.proj.shape)}"
            )
        q = _ProjectFn.apply(c, self.proj, self.levels)
        if self.training and q.requires_grad:
            q.retain_grad()
            self.last = q
        return q


def projection_loss_grads(
    c: torch.Tensor, w: torch.Tensor, q: torch.Tensor, dq: torch.Tensor, eta: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The projection loss L_P = lam/2 ||q - W~ o (c + eta dq)||^2 of one layer and its closed-form gradients
    (eqs. 3.53 and 3.56), q = C^ and dq = dL_S/dC^ constants:
    dL_P/dc = lam (W~ o (c + eta dq) - q) o W~, dL_P/dW = lam sum over (C_out, C_in) of (W~ o (c + eta dq) - q) o
    (c + eta dq). Returns (L_P, dL_P/dc, dL_P/dW)."""
    target = c + eta * dq
    r = w * target - q
    return 0.5 * lam * r.pow(2).sum(), lam * r * w, lam * (r * target).sum(dim=(0, 1))


def projection_params(model: nn.Module) -> list[nn.Parameter]:
    """The learned projection matrices of a PCNN model (none for another model)."""
    return [m.proj for m in model.modules() if isinstance(m, ProjectionWeight)]
