"""BONN's Bayesian binary kernels: sign(k) scaled by a learned reconstruction vector, and the Bayesian kernel loss.

Gu, Zhao, Jiang, Zhang, Han, Cao, Doermann, "Bayesian Optimized 1-Bit CNNs", ICCV 2019; the equations are those of the
authors' book chapter (Zhang et al., *Binary Neural Networks*, Sec. 3.7, eqs. 3.97-3.111, Algorithm 5).

- Kernels and activations are binarised by sign. Each layer has a learned reconstruction vector w (one entry per
  output filter here) with w o k ~ sign(k); the forward replaces w by the average of its elements, so the output is
  s Conv(sign(A), sign(k)) with one scalar s per layer. UNVERIFIED, two readings (`scale_form`): s = 1/mean(w)
  ("inv_mean_w", eq. 3.111's (w)^-1 (K^ * O^): since w o k ~ sign(k), 1/w ~ |k|, an XNOR-like scale) or s = mean(w)
  (Algorithm 5's k^ = w o sign(k)).
- Gradient: the clip straight-through estimator 1[|k| <= 1] on sign (UNVERIFIED), times s; s is differentiated (w
  learns from the label loss too).
- Bayesian kernel loss of a layer (eq. 3.102's shape): ||sign(k) - w o k||^2 + nu [sum_{k > 0} (k - mu+)^2 / sigma+^2 +
  sum_{k <= 0} (k + mu-)^2 / sigma-^2 + n+ log sigma+^2 + n- log sigma-^2]: a two-mode Gaussian mixture prior at
  +-mu with diagonal covariance sigma^2 (one mu and one sigma per mode and layer here), mu and sigma learned and
  initialised from the mean and variance of the kernel's positive and negative entries (Algorithm 5). The training
  loss adds lambda/2 of it (lambda = 1e-4; nu UNVERIFIED, 1e-4).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from methods.binary.quantizers import Quantizer, SteSign, binary_sign

__all__ = ["BayesWeight", "ScaleForm"]

ScaleForm = Literal["inv_mean_w", "mean_w"]


class BayesWeight(Quantizer):
    """BONN's weight quantizer (module docstring) for a conv with `out_channels` filters: s sign(k), s from the
    reconstruction vector w; :meth:`kernel_loss` is the layer's Bayesian kernel loss."""

    # parameters that only the kernel loss trains (the forward does not use them)
    loss_only_params = ("mu", "log_var")

    def __init__(self, out_channels: int, scale_form: ScaleForm = "inv_mean_w") -> None:
        super().__init__()
        if scale_form not in ("inv_mean_w", "mean_w"):
            raise ValueError(f"BayesWeight: scale_form must be 'inv_mean_w' or 'mean_w', got {scale_form!r}")
        self.scale_form = scale_form
        self.sign = SteSign(clip_value=1.0)
        self.w = nn.Parameter(torch.ones(out_channels))
        self.mu = nn.Parameter(torch.full((2,), 0.1))  # (mu+, mu-), magnitudes
        self.log_var = nn.Parameter(torch.zeros(2))  # log sigma^2 of (+, -)

    @torch.no_grad()
    def init_from_kernel(self, k: torch.Tensor) -> None:
        """Algorithm 5's initialisation from the latent kernel k: mu and sigma^2 of its positive and negative
        entries; w = 1/mean|k_o| per filter (so that w o k ~ sign(k) on average)."""
        for i, part in enumerate((k[k > 0], -k[k <= 0])):
            if part.numel() > 1:
                self.mu[i] = part.mean()
                self.log_var[i] = part.var().clamp_min(1e-12).log()
        self.w.copy_(1.0 / k.abs().mean(dim=(1, 2, 3)).clamp_min(1e-12))

    def scale(self) -> torch.Tensor:
        m = self.w.mean()
        return 1.0 / m if self.scale_form == "inv_mean_w" else m

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        return self.scale() * self.sign(k)

    def kernel_loss(self, k: torch.Tensor, nu: float) -> torch.Tensor:
        """||sign(k) - w o k||^2 + nu x the two-mode Gaussian prior's negative log-likelihood (module docstring)."""
        recon = (binary_sign(k).detach() - self.w.view(-1, *([1] * (k.dim() - 1))) * k).pow(2).sum()
        pos = k > 0
        var = self.log_var.exp()
        prior = ((k - self.mu[0]).pow(2) * pos).sum() / var[0] + ((k + self.mu[1]).pow(2) * ~pos).sum() / var[1]
        prior = prior + pos.sum() * self.log_var[0] + (~pos).sum() * self.log_var[1]
        return recon + nu * prior
