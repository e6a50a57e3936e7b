"""`methods/binary/react.py`: ReActNet's RSign, RPReLU and scaled-sign weights against hand computations."""

from __future__ import annotations

import torch

from methods.binary.react import RPReLU, RSign, ScaledSignWeight


def test_rsign_shifts_the_threshold_and_its_gradient_is_approxsign_at_the_shifted_input():
    q = RSign(2)
    with torch.no_grad():
        q.bias.copy_(torch.tensor([0.5, -0.25]))
    x = torch.tensor([[[[-0.6, -0.4]], [[0.2, 0.3]]]], requires_grad=True)  # (1, 2, 1, 2)
    y = q(x)
    # channel 0: x + 0.5 = -0.1, 0.1 -> -1, +1; channel 1: x - 0.25 = -0.05, 0.05 -> -1, +1
    assert y.tolist() == [[[[-1.0, 1.0]], [[-1.0, 1.0]]]]
    g = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    y.backward(g)
    shifted = torch.tensor([[[[-0.1, 0.1]], [[-0.05, 0.05]]]])
    expected = g * (2 - 2 * shifted.abs())
    torch.testing.assert_close(x.grad, expected)
    torch.testing.assert_close(q.bias.grad, expected.sum(dim=(0, 2, 3)))
    assert q.signs_only and not q.fuses_sign


def test_rsign_passes_no_gradient_outside_the_unit_interval():
    q = RSign(1)
    x = torch.tensor([[[[-2.0, 1.5, 0.0]]]], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [[[[0.0, 0.0, 2.0]]]]


def test_rprelu_is_prelu_of_the_shifted_input_plus_a_shift():
    m = RPReLU(1)
    with torch.no_grad():
        m.shift_in.fill_(0.5)
        m.shift_out.fill_(-1.0)
        m.prelu.weight.fill_(0.1)
    x = torch.tensor([[[[-1.5, 0.5]]]])
    # x + 0.5 = -1.0, 1.0 -> PReLU: -0.1, 1.0 -> + (-1): -1.1, 0.0
    torch.testing.assert_close(m(x), torch.tensor([[[[-1.1, 0.0]]]]))


def test_scaled_sign_weight_has_a_detached_filter_scale_and_the_clamp_ste():
    w = torch.tensor([[[[0.5, -1.5]]], [[[0.25, 0.25]]]], requires_grad=True)  # (2 filters, 1, 1, 2)
    wb = ScaledSignWeight()(w)
    torch.testing.assert_close(wb, torch.tensor([[[[1.0, -1.0]]], [[[0.25, 0.25]]]]))  # mean |W_o| = 1.0, 0.25
    g = torch.tensor([[[[1.0, 1.0]]], [[[2.0, 3.0]]]])
    wb.backward(g)
    assert w.grad.tolist() == [[[[1.0, 0.0]]], [[[2.0, 3.0]]]]  # |W| > 1 masked; no term from the scale


def test_react_resnet18_counts_as_the_recount_and_binarises_every_stage_conv():
    import timm

    import methods  # noqa: F401
    from harness.costs import profile_model

    p = profile_model(timm.create_model("react_resnet18"), (3, 224, 224), "bireal")
    # hand recount (Bi-Real-18 with real 1x1 downsample): 1.676e9 BOPs + 1.378e8 FLOPs = 1.64e8 OPs
    assert abs(p.bops - 1.676e9) / 1.676e9 < 0.01 and abs(p.flops - 1.378e8) / 1.378e8 < 0.01
    assert abs(p.ops - 1.64e8) / 1.64e8 < 0.01
    assert p.audit["binary_inputs_in_alphabet"] and p.audit["binary_layers"] == 16
    step1 = timm.create_model("react_resnet18_cifar", weight_binary=False)  # binary activations, real weights
    assert all(c.weight_quantizer is None for c in step1.modules() if hasattr(c, "weight_quantizer"))


def test_react_resnet18_learns_on_real_cifar(cifar_cache, tmp_path):
    import csv

    from _helpers import tiny_config

    from harness.training import run_train

    cfg = tiny_config(
        model="react_resnet18_cifar",
        epochs=5,
        train_subset=256,
        test_subset=100,
        opt="adam",
        lr=5e-4,
        weight_decay=0.0,
        sched="constant",
        model_kwargs={"widths": [16, 32, 64, 128]},
    )
    run_train(cfg, cifar_cache, tmp_path / "run", progress=False)
    losses = [float(r["train/loss"]) for r in csv.DictReader(open(tmp_path / "run" / "history.csv"))]
    assert losses[-1] < losses[0], losses
