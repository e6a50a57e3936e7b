"""Training hooks for losses on the binary layers' kernels: PCNN's projection loss (train.projection_loss; Gu et al.,
AAAI 2019), applied through its closed-form gradients after the label loss's backward pass, and BONN's Bayesian kernel
loss (train.bayes_kernel_loss; Gu et al., ICCV 2019), a term of the training loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.distributed import Runtime, all_reduce_sum
from harness.engine import Hook
from harness.errors import ConfigError
from methods.binary import BinaryConv2d
from methods.binary.bayes import BayesWeight
from methods.binary.projection import ProjectionWeight, projection_loss_grads

__all__ = ["ProjectionLossHook", "BayesKernelLossHook"]


def _projection_convs(model: nn.Module) -> list[BinaryConv2d]:
    return [
        m for m in model.modules() if isinstance(m, BinaryConv2d) and isinstance(m.weight_quantizer, ProjectionWeight)
    ]


class ProjectionLossHook(Hook):
    """PCNN's discrete back-propagation (methods/binary/projection.py): after the backward pass of the label loss,
    adds lambda x the projection loss's gradients to each projection conv's latent kernel C and projection matrix W,
    with dC^ = dL_S/dC^ of this step (averaged over processes, as DDP averages the other gradients) and eta the
    current lr of C's parameter group. The epoch's mean L_P (summed over layers) is logged as
    `train/projection_loss`; it is not part of `train/loss`, the label loss."""

    def __init__(self, model: nn.Module, lam: float, optimizer: torch.optim.Optimizer, rt: Runtime) -> None:
        self.convs = _projection_convs(model)
        if not self.convs:
            raise ConfigError(
                f"train.projection_loss: needs a model with PCNN projection convs (e.g. pcnn_resnet18); "
                f"{type(model).__name__} has none"
            )
        self.lam, self.rt = lam, rt
        self._group = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        self._sum, self._n = 0.0, 0

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        self._sum, self._n = 0.0, 0

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        total = 0.0
        for conv in self.convs:
            wq: Any = conv.weight_quantizer
            q = wq.last
            if q is None or q.grad is None:
                continue
            dq = all_reduce_sum(q.grad.clone(), self.rt) / self.rt.world_size
            eta = float(self._group[id(conv.weight)]["lr"])
            lp, gc, gw = projection_loss_grads(conv.weight, wq.proj, q.detach(), dq, eta, self.lam)
            for p, g in ((conv.weight, gc), (wq.proj, gw)):
                if p.grad is None:
                    p.grad = g.to(p.dtype)
                else:
                    p.grad.add_(g.to(p.grad.dtype))
            total += float(lp)
            wq.last = None
        self._sum += total
        self._n += 1

    def epoch_metrics(self) -> dict[str, float]:
        return {"train/projection_loss": self._sum / self._n} if self._n else {}


class BayesKernelLossHook(Hook):
    """Adds lambda/2 x the sum over BONN's binary convs of their Bayesian kernel loss (reconstruction plus nu x the
    two-mode Gaussian prior: :meth:`methods.binary.bayes.BayesWeight.kernel_loss`) to the training loss; its epoch
    mean (with the factor lambda/2) is logged as `train/bayes_kernel_loss`."""

    def __init__(self, model: nn.Module, lam: float, nu: float) -> None:
        self.convs = [
            m for m in model.modules() if isinstance(m, BinaryConv2d) and isinstance(m.weight_quantizer, BayesWeight)
        ]
        if not self.convs:
            raise ConfigError(
                f"train.bayes_kernel_loss: needs a model with BONN's Bayesian binary convs (e.g. bonn_resnet18); "
                f"{type(model).__name__} has none"
            )
        self.lam, self.nu = lam, nu
        self._sum, self._n = 0.0, 0

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        self._sum, self._n = 0.0, 0

    def loss(self, model: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), device=logits.device)
        for c in self.convs:
            wq: Any = c.weight_quantizer
            total = total + wq.kernel_loss(c.weight, self.nu)
        term = 0.5 * self.lam * total
        self._sum += float(term.detach())
        self._n += 1
        return term

    def epoch_metrics(self) -> dict[str, float]:
        return {"train/bayes_kernel_loss": self._sum / self._n} if self._n else {}
