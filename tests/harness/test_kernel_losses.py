"""harness/kernel_losses.py and the projection matrices' own lr (harness/engine.py build_optimizer): on real CIFAR-10
images, one step of a PCNN network descends on the label loss's gradient plus the projection loss's closed form."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from _helpers import one_training_step
from torch import nn

from harness.cifar10 import CifarLoader, load_cifar10
from harness.config import TrainConfig
from harness.distributed import Runtime
from harness.engine import build_optimizer, build_scheduler
from harness.errors import ConfigError
from harness.kernel_losses import ProjectionLossHook
from methods.binary import BinaryConv2d
from methods.binary.projection import ProjectionWeight, projection_loss_grads, projection_params

CPU = Runtime(torch.device("cpu"))


def _pcnn() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("pcnn_resnet18_cifar", widths=[8, 16, 32, 64])


def _projection_convs(model: nn.Module) -> list[BinaryConv2d]:
    return [
        m for m in model.modules() if isinstance(m, BinaryConv2d) and isinstance(m.weight_quantizer, ProjectionWeight)
    ]


def test_one_step_adds_the_projection_loss_gradients(cifar_cache):
    ds = load_cifar10(cifar_cache)
    x, y = next(iter(CifarLoader(ds.train_x[:32], ds.train_y[:32], 32, train=False)))
    model = _pcnn()
    ref = copy.deepcopy(model)
    lam, lr = 1e-2, 0.05
    # by hand: the label loss's gradients at the starting weights, then the closed form with eta = lr
    nn.functional.cross_entropy(ref(x), y).backward()
    want = {}
    for i, conv in enumerate(_projection_convs(ref)):
        wq = conv.weight_quantizer
        _, gc, gw = projection_loss_grads(
            conv.weight.detach(), wq.proj.detach(), wq.last.detach(), wq.last.grad, lr, lam
        )
        want[i] = (conv.weight.grad + gc, wq.proj.grad + gw)
    cfg = TrainConfig(lr=lr, weight_decay=0.0, sched="constant", opt="momentum", momentum=0.0, channels_last=False)
    opt = build_optimizer(cfg, model)
    hook = ProjectionLossHook(model, lam, opt, CPU)
    start = {i: (c.weight.detach().clone(), c.weight_quantizer.proj.detach().clone()) for i, c in enumerate(hook.convs)}
    one_training_step(model, (x, y), cfg, opt, hook)
    for i, conv in enumerate(hook.convs):  # plain SGD: new = old - lr * (g_S + g_P)
        assert torch.allclose(conv.weight.detach(), start[i][0] - lr * want[i][0], atol=1e-6), i
        assert torch.allclose(conv.weight_quantizer.proj.detach(), start[i][1] - lr * want[i][1], atol=1e-6), i
    assert hook.epoch_metrics()["train/projection_loss"] > 0


def test_projection_matrices_take_their_own_lr_through_the_schedule():
    model = _pcnn()
    for sched in ("onecycle", "multistep", "cosine"):
        cfg = TrainConfig(lr=0.1, sched=sched, decay_milestones=[1], projection_lr_scale=0.1, epochs=4)
        opt = build_optimizer(cfg, model)
        own = {id(p) for p in projection_params(model)}
        groups = [g for g in opt.param_groups if any(id(p) in own for p in g["params"])]
        assert groups and all(all(id(p) in own for p in g["params"]) for g in groups)
        others = [g for g in opt.param_groups if g not in groups]
        s = build_scheduler(cfg, opt, 5)
        for step in range(1, 12):
            opt.step()  # no gradients: no update; keeps torch's step order
            s.step(step)
            assert groups[0]["lr"] == pytest.approx(0.1 * others[0]["lr"], rel=1e-6), (sched, step)
    with pytest.raises(ConfigError, match="train.projection_lr_scale: the model has no PCNN projection matrices"):
        build_optimizer(TrainConfig(projection_lr_scale=0.5), timm.create_model("test_resnet"))


def test_the_projection_loss_needs_a_pcnn_model():
    model = timm.create_model("test_resnet")
    opt = build_optimizer(TrainConfig(), model)
    with pytest.raises(ConfigError, match="train.projection_loss: needs a model with PCNN projection convs"):
        ProjectionLossHook(model, 1e-4, opt, CPU)


def test_the_bayes_kernel_loss_is_a_term_of_the_objective(cifar_cache):
    from harness.kernel_losses import BayesKernelLossHook
    from methods.binary.bayes import BayesWeight

    ds = load_cifar10(cifar_cache)
    x, y = next(iter(CifarLoader(ds.train_x[:32], ds.train_y[:32], 32, train=False)))
    torch.manual_seed(0)
    model = timm.create_model("bonn_resnet18_cifar", widths=[8, 16, 32, 64])
    ref = copy.deepcopy(model)
    lam, nu = 1e-2, 0.5
    convs = [m for m in ref.modules() if isinstance(m, BinaryConv2d) and isinstance(m.weight_quantizer, BayesWeight)]
    with torch.no_grad():
        kl = sum(c.weight_quantizer.kernel_loss(c.weight, nu) for c in convs)
        expected = nn.functional.cross_entropy(ref(x), y) + 0.5 * lam * kl
    cfg = TrainConfig(lr=0.01, weight_decay=0.0, sched="constant", opt="momentum", channels_last=False)
    opt = build_optimizer(cfg, model)
    hook = BayesKernelLossHook(model, lam, nu)
    row = one_training_step(model, (x, y), cfg, opt, hook)
    assert row["train/loss"] == pytest.approx(float(expected), rel=1e-5)
    assert hook.epoch_metrics()["train/bayes_kernel_loss"] == pytest.approx(float(0.5 * lam * kl), rel=1e-5)
    with pytest.raises(ConfigError, match="train.bayes_kernel_loss: needs a model with BONN"):
        BayesKernelLossHook(_pcnn(), lam, nu)
