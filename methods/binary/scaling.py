"""Learned output scales of XNOR-Net++: Y = (sign(X) * sign(W)) . Gamma, Gamma learned by backprop.

Reference: Bulat & Tzimiropoulos, "XNOR-Net++: Improved Binary Neural Networks", BMVC 2019, arXiv 1909.13863.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["ScaleShape", "LearnedScale"]

ScaleShape = Literal["channel", "factorised", "full"]


class LearnedScale(nn.Module):
    """Gamma in one of XNOR-Net++'s shapes, initialised to ones.

    - "channel": Gamma = alpha in R^{C_out} (broadcast over space; the authors' `BasicScaleBinarizer`).
    - "factorised": Gamma = alpha (x) beta (x) gamma, alpha in R^{C_out}, beta in R^{H_out}, gamma in R^{W_out}
      (a rank-1 outer product, O(C + H + W) parameters).
    - "full": one tensor in R^{C_out x H_out x W_out}.

    The spatial shapes tie the model to its input resolution: `out_size` (H_out, W_out) is fixed at construction and a
    different resolution is an error.
    """

    def __init__(self, channels: int, shape: ScaleShape = "channel", out_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.shape = shape
        if shape == "channel":
            self.alpha = nn.Parameter(torch.ones(1, channels, 1, 1))
        elif shape in ("factorised", "full"):
            if out_size is None:
                raise ValueError(f"scale shape '{shape}' needs the output size (H_out, W_out)")
            h, w = out_size
            if shape == "factorised":
                self.alpha = nn.Parameter(torch.ones(1, channels, 1, 1))
                self.beta = nn.Parameter(torch.ones(1, 1, h, 1))
                self.gamma = nn.Parameter(torch.ones(1, 1, 1, w))
            else:
                self.alpha = nn.Parameter(torch.ones(1, channels, h, w))
        else:
            raise ValueError(f"scale shape must be 'channel', 'factorised' or 'full', got {shape!r}")

    def gamma_tensor(self) -> torch.Tensor:
        """Gamma broadcastable to (N, C_out, H_out, W_out)."""
        if self.shape == "factorised":
            return self.alpha * self.beta * self.gamma
        return self.alpha

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        g = self.gamma_tensor()
        if g.shape[-2:] != (1, 1) and g.shape[-2:] != y.shape[-2:]:
            raise ValueError(f"learned scale built for {tuple(g.shape[-2:])} outputs, got {tuple(y.shape[-2:])}")
        return y * g

    def extra_repr(self) -> str:
        return f"shape={self.shape}, gamma={tuple(self.gamma_tensor().shape)}"
