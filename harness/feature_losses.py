"""Training hooks that add a loss on the penultimate features, the input of the model's classifier: the center loss
(train.center_loss) of CBCN's fine-tune (Liu et al., CVPR 2019) and PCNN's L_C (Gu et al., AAAI 2019)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.distributed import Runtime, all_reduce_sum
from harness.engine import Hook
from harness.errors import ConfigError
from methods.losses import CenterLoss

__all__ = ["CenterLossHook"]


def classifier(model: nn.Module, key: str) -> nn.Linear:
    """The model's linear classifier (timm's `get_classifier()`), whose input the feature losses read.

    Raises:
        ConfigError: the model has no linear classifier; `key` names the setting that needs one.
    """
    get = getattr(model, "get_classifier", None)
    clf = get() if callable(get) else None
    if not isinstance(clf, nn.Linear):
        raise ConfigError(
            f"{key}: needs a model whose get_classifier() is a linear layer (its input: the penultimate features); "
            f"{type(model).__name__} has {type(clf).__name__ if clf is not None else 'none'}"
        )
    return clf


class CenterLossHook(Hook):
    """Adds `weight` x L_C (:class:`methods.losses.CenterLoss`) on the classifier's input to the training loss, and
    moves the class centres after each optimizer step by Wen et al.'s rule, with the sums of eq. 4 taken over all
    processes (the global batch). The centres are kept in the checkpoint, so a resumed run continues with them; the
    epoch's mean L_C (this process's batches) is logged as `train/center_loss`."""

    def __init__(self, model: nn.Module, num_classes: int, weight: float, alpha: float, rt: Runtime) -> None:
        clf = classifier(model, "train.center_loss")
        self.weight, self.rt = weight, rt
        self.criterion = CenterLoss(num_classes, clf.in_features, alpha).to(rt.device)
        self._features: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._sum = torch.zeros((), dtype=torch.float64)
        self._n = 0
        clf.register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if module.training:  # training forwards only: evaluation leaves the centres alone
            self._features = args[0]

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        self._sum.zero_()
        self._n = 0

    def loss(self, model: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self._features is None:
            raise RuntimeError("CenterLossHook: the training forward did not pass through the model's classifier")
        self._labels = labels
        lc = self.criterion(self._features, labels)
        self._sum += lc.detach().double().cpu()
        self._n += 1
        return self.weight * lc

    def after_step(self, model: nn.Module) -> None:
        if self._features is None or self._labels is None:
            return
        diff, counts = self.criterion.center_update(self._features, self._labels)
        self.criterion.apply_update(all_reduce_sum(diff, self.rt), all_reduce_sum(counts, self.rt))
        self._features = self._labels = None

    def epoch_metrics(self) -> dict[str, float]:
        return {"train/center_loss": float(self._sum) / self._n} if self._n else {}

    def state_dict(self) -> dict[str, Any]:
        return {"centers": self.criterion.centers.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        centers = state.get("centers")
        if centers is not None:
            self.criterion.centers.copy_(centers)
