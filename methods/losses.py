"""Losses on a network's penultimate features, which some binary methods add to the label loss.

- :class:`CenterLoss`: the center loss of Wen et al. (ECCV 2016). CBCN (Liu et al., CVPR 2019) fine-tunes its
  cross-entropy-trained network with it, and PCNN (Gu et al., AAAI 2019) adds it as L_C.
- :class:`BayesFeatureLoss`: BONN's Bayesian feature loss (Gu et al., ICCV 2019), a Gaussian per class.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CenterLoss", "BayesFeatureLoss"]


class CenterLoss(nn.Module):
    """L_C = 1/(2B) sum_b ||f_b - c_{y_b}||^2 over a batch of B features f_b with labels y_b (Wen et al., ECCV 2016,
    eq. 2, averaged over the batch as their implementation does). The class centres c_m are a buffer: they get no
    gradient, and :meth:`step` moves them by the paper's own rule (eq. 4),
    c_m <- c_m - alpha * sum_{b: y_b = m} (c_m - f_b) / (1 + n_m), n_m = the batch's count of class m.

    The centres start at zero (the paper leaves their initialisation open)."""

    centers: torch.Tensor

    def __init__(self, num_classes: int, num_features: int, alpha: float = 0.5) -> None:
        super().__init__()
        if num_classes < 1 or num_features < 1:
            raise ValueError(
                f"CenterLoss: num_classes and num_features must be >= 1, got {num_classes}, {num_features}"
            )
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"CenterLoss: alpha (the centres' update rate) must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.register_buffer("centers", torch.zeros(num_classes, num_features))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """L_C of a batch: `features` (B, D), `labels` (B,) class indices. Its gradient in f_b is (f_b - c_{y_b})/B."""
        if features.dim() != 2 or features.shape[1] != self.centers.shape[1]:
            raise ValueError(
                f"CenterLoss: features of shape {tuple(features.shape)}; expected (batch, {self.centers.shape[1]})"
            )
        diff = features.float() - self.centers[labels]
        return 0.5 * diff.pow(2).sum(dim=1).mean()

    @torch.no_grad()
    def center_update(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two sums of eq. 4 for a batch: per class, sum_{b: y_b = m} (c_m - f_b) (K, D) and n_m (K,). Summed
        over processes, they give the update of the global batch (:meth:`apply_update`)."""
        f = features.detach().float()
        diff = torch.zeros_like(self.centers).index_add_(0, labels, self.centers[labels] - f)
        counts = torch.bincount(labels, minlength=self.centers.shape[0]).to(self.centers.dtype)
        return diff, counts

    @torch.no_grad()
    def apply_update(self, diff: torch.Tensor, counts: torch.Tensor) -> None:
        """c_m <- c_m - alpha * diff_m / (1 + n_m) (eq. 4)."""
        self.centers -= self.alpha * diff / (1.0 + counts).unsqueeze(1)

    def step(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Move the centres by one batch (one process)."""
        self.apply_update(*self.center_update(features, labels))


class BayesFeatureLoss(nn.Module):
    """BONN's Bayesian feature loss on the penultimate features (book Sec. 3.7, Algorithm 5):
    L_F = 1/(2B) sum_b [||f_b - c_{y_b}||^2 / sigma_{y_b}^2 + log sigma_{y_b}^2], one Gaussian (mean c_m, variance
    sigma_m^2 over the whole feature vector) per class, averaged over the batch.

    The class statistics are buffers, updated after each step like Wen et al.'s centres (INFERRED: Algorithm 5
    updates them, by a rule not retrieved): c_m <- c_m - alpha sum_{b: y_b = m} (c_m - f_b) / (1 + n_m) and
    sigma_m^2 <- sigma_m^2 - alpha sum_{b: y_b = m} (sigma_m^2 - ||f_b - c_m||^2) / (1 + n_m), which moves sigma_m^2
    towards the minimiser of the loss, the class's mean squared distance. They start at c = 0, sigma^2 = 1."""

    centers: torch.Tensor
    variances: torch.Tensor

    def __init__(self, num_classes: int, num_features: int, alpha: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"BayesFeatureLoss: alpha (the class statistics' rate) must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.register_buffer("centers", torch.zeros(num_classes, num_features))
        self.register_buffer("variances", torch.ones(num_classes))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """L_F of a batch: `features` (B, D), `labels` (B,)."""
        d2 = (features.float() - self.centers[labels]).pow(2).sum(dim=1)
        var = self.variances[labels]
        return 0.5 * (d2 / var + var.log()).mean()

    @torch.no_grad()
    def center_update(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per class: sum (c_m - f_b), n_m and sum (sigma_m^2 - ||f_b - c_m||^2); summed over processes they give
        the global batch's update (:meth:`apply_update`)."""
        f = features.detach().float()
        c = self.centers[labels]
        diff = torch.zeros_like(self.centers).index_add_(0, labels, c - f)
        counts = torch.bincount(labels, minlength=self.centers.shape[0]).to(self.centers.dtype)
        vdiff = torch.zeros_like(self.variances).index_add_(0, labels, self.variances[labels] - (f - c).pow(2).sum(1))
        return diff, counts, vdiff

    @torch.no_grad()
    def apply_update(self, diff: torch.Tensor, counts: torch.Tensor, vdiff: torch.Tensor) -> None:
        rate = self.alpha / (1.0 + counts)
        self.centers -= rate.unsqueeze(1) * diff
        self.variances.sub_(rate * vdiff).clamp_(min=1e-6)

    def step(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Move the class statistics by one batch (one process)."""
        self.apply_update(*self.center_update(features, labels))
