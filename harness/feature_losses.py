"""Training hooks that add a loss on the penultimate features, the input of the model's classifier: the center loss
(train.center_loss) of CBCN's fine-tune (Liu et al., CVPR 2019) and PCNN's L_C (Gu et al., AAAI 2019), and BONN's
Bayesian feature loss (train.bayes_feature_loss; Gu et al., ICCV 2019)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.distributed import Runtime, all_reduce_sum
from harness.engine import Hook
from harness.errors import ConfigError
from methods.losses import BayesFeatureLoss, CenterLoss

__all__ = ["FeatureLossHook", "CenterLossHook", "BayesFeatureLossHook"]


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


class FeatureLossHook(Hook):
    """Adds `weight` x `criterion`(classifier input, labels) to the training loss, and moves the criterion's class
    statistics after each optimizer step, with the sums of their update taken over all processes (the global batch).
    The statistics are kept in the checkpoint, so a resumed run continues with them; the epoch's mean loss (this
    process's batches) is logged as `metric`. `criterion` has `center_update(f, y)` (a tuple of sums) and
    `apply_update(*sums)` (:mod:`methods.losses`)."""

    key = "train.feature_loss"  # the setting that asks for it (in errors)
    metric = "train/feature_loss"

    def __init__(self, model: nn.Module, criterion: nn.Module, weight: float, rt: Runtime) -> None:
        clf = classifier(model, self.key)
        self.weight, self.rt = weight, rt
        self.criterion = criterion.to(rt.device)
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
            raise RuntimeError(
                f"{type(self).__name__}: the training forward did not pass through the model's classifier"
            )
        self._labels = labels
        lc = self.criterion(self._features, labels)
        self._sum += lc.detach().double().cpu()
        self._n += 1
        return self.weight * lc

    def after_step(self, model: nn.Module) -> None:
        if self._features is None or self._labels is None:
            return
        crit: Any = self.criterion  # CenterLoss or BayesFeatureLoss (methods/losses.py)
        sums = crit.center_update(self._features, self._labels)
        crit.apply_update(*(all_reduce_sum(t, self.rt) for t in sums))
        self._features = self._labels = None

    def epoch_metrics(self) -> dict[str, float]:
        return {self.metric: float(self._sum) / self._n} if self._n else {}

    def state_dict(self) -> dict[str, Any]:
        return {k: v.detach().cpu().clone() for k, v in self.criterion.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.criterion.load_state_dict(state)


class CenterLossHook(FeatureLossHook):
    """`weight` x Wen et al.'s center loss (:class:`methods.losses.CenterLoss`), logged as `train/center_loss`."""

    key, metric = "train.center_loss", "train/center_loss"

    def __init__(self, model: nn.Module, num_classes: int, weight: float, alpha: float, rt: Runtime) -> None:
        super().__init__(model, CenterLoss(num_classes, classifier(model, self.key).in_features, alpha), weight, rt)


class BayesFeatureLossHook(FeatureLossHook):
    """`weight` (theta) x BONN's Bayesian feature loss (:class:`methods.losses.BayesFeatureLoss`), logged as
    `train/bayes_feature_loss`."""

    key, metric = "train.bayes_feature_loss", "train/bayes_feature_loss"

    def __init__(self, model: nn.Module, num_classes: int, weight: float, alpha: float, rt: Runtime) -> None:
        features = classifier(model, self.key).in_features
        super().__init__(model, BayesFeatureLoss(num_classes, features, alpha), weight, rt)
