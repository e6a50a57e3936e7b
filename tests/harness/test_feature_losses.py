"""harness/feature_losses.py: the center-loss hook on real CIFAR-10 images. It adds lambda x L_C on the classifier's
input to the objective the step minimises, moves the centres by eq. 4 over the global batch, resumes with them, and
refuses a model without a linear classifier."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from _helpers import one_training_step, strip_perf, tiny_config
from torch import nn

from harness.cifar10 import CifarLoader, load_cifar10
from harness.config import TrainConfig
from harness.distributed import Runtime
from harness.engine import build_optimizer
from harness.errors import ConfigError
from harness.feature_losses import CenterLossHook
from harness.training import run_train
from methods.losses import CenterLoss

CPU = Runtime(torch.device("cpu"))


def _batch(cifar_cache, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_cifar10(cifar_cache)
    return next(iter(CifarLoader(ds.train_x[:n], ds.train_y[:n], n, train=False)))


def test_one_step_minimises_cross_entropy_plus_lambda_center_loss(cifar_cache):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10)
    ref = copy.deepcopy(model)
    x, y = _batch(cifar_cache)
    lam = 0.5
    # the objective by hand, at the step's starting weights (centres at zero): CE + lam/(2B) sum_b ||f_b||^2
    feats = ref.forward_head(ref.forward_features(x), pre_logits=True)
    expected = nn.functional.cross_entropy(ref.fc(feats), y) + lam * 0.5 * feats.pow(2).sum(1).mean()
    hook = CenterLossHook(model, 10, lam, 0.5, CPU)
    cfg = TrainConfig(lr=0.01, weight_decay=0.0, sched="constant", opt="momentum", channels_last=False)
    opt = build_optimizer(cfg, model)
    row = one_training_step(model, (x, y), cfg, opt, hook)
    assert row["train/loss"] == pytest.approx(float(expected.detach()), rel=1e-4)
    lc = 0.5 * feats.pow(2).sum(1).mean()
    assert hook.epoch_metrics()["train/center_loss"] == pytest.approx(float(lc.detach()), rel=1e-4)
    # after the step the centres moved by eq. 4 with the step's features
    want = CenterLoss(10, feats.shape[1], alpha=0.5)
    want.step(feats.detach(), y)
    assert torch.allclose(hook.criterion.centers, want.centers, atol=1e-5)
    assert float(hook.criterion.centers.abs().sum()) > 0


def test_evaluation_forwards_leave_the_centres_alone(cifar_cache):
    model = timm.create_model("test_resnet", num_classes=10).eval()
    hook = CenterLossHook(model, 10, 1.0, 0.5, CPU)
    with torch.no_grad():
        model(_batch(cifar_cache, 16)[0])
    hook.after_step(model)
    assert float(hook.criterion.centers.abs().sum()) == 0.0


def test_a_run_with_center_loss_resumes_with_its_centres(cifar_cache, tmp_path):
    from _helpers import CrashAfter

    cfg = tiny_config(epochs=2, train_subset=128, test_subset=64, center_loss=0.01)
    full = run_train(cfg, cifar_cache, tmp_path / "full", progress=False)
    assert full["train/center_loss"] > 0
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_train(cfg, cifar_cache, tmp_path / "cut", hooks=[CrashAfter(0)], progress=False)
    resumed = run_train(cfg, cifar_cache, tmp_path / "cut", resume=True, progress=False)
    assert strip_perf(resumed) == strip_perf(full)


def test_a_model_without_a_linear_classifier_is_a_clear_error():
    model = timm.create_model("test_resnet", num_classes=0)  # its classifier is nn.Identity
    with pytest.raises(ConfigError, match=r"train.center_loss: needs a model whose get_classifier\(\) is a linear"):
        CenterLossHook(model, 10, 0.01, 0.5, CPU)


def test_a_bonn_run_with_both_bayesian_losses_resumes_exactly(cifar_cache, tmp_path):
    from _helpers import CrashAfter

    cfg = tiny_config(
        model="bonn_resnet18_cifar",
        model_kwargs={"widths": [8, 16, 32, 64]},
        epochs=2,
        train_subset=128,
        test_subset=64,
        bayes_kernel_loss=1e-4,
        bayes_feature_loss=1e-3,
    )
    full = run_train(cfg, cifar_cache, tmp_path / "full", progress=False)
    assert full["train/bayes_feature_loss"] != 0 and full["train/bayes_kernel_loss"] > 0
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_train(cfg, cifar_cache, tmp_path / "cut", hooks=[CrashAfter(0)], progress=False)
    resumed = run_train(cfg, cifar_cache, tmp_path / "cut", resume=True, progress=False)
    assert strip_perf(resumed) == strip_perf(full)
