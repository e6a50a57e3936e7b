"""`methods/binary/abc.py` and `methods/baselines/abcnet.py`: ABC-Net's bases against hand computations and counts."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import methods  # noqa: F401
from harness.costs import profile_model
from methods.binary import binary_sign
from methods.binary.abc import ABCConv2d, MultiBaseWeight, MultiShiftActivation


def _conv(seed: int = 0, **kw) -> tuple[ABCConv2d, torch.Tensor]:
    torch.manual_seed(seed)
    return ABCConv2d(3, 5, 3, 1, 1, **kw), torch.randn(2, 3, 6, 6)


def test_one_by_one_is_a_per_layer_alpha_xnor_conv():
    conv, x = _conv()
    with torch.no_grad():
        conv.weight.sub_(conv.weight.mean())  # zero-mean: the least-squares alpha is XNOR's mean |W|
    w = conv.weight.detach()
    alpha = w.abs().mean()  # one scale for the whole layer
    expected = F.conv2d(binary_sign(x), alpha * binary_sign(w), padding=1)
    torch.testing.assert_close(conv(x), expected)
    # any W: B = sign(W - mean W) and alpha = <W, B> / n (the least-squares fit of one base)
    conv2, x2 = _conv(seed=1)
    w2 = conv2.weight.detach()
    b = binary_sign(w2 - w2.mean())
    torch.testing.assert_close(conv2(x2), F.conv2d(binary_sign(x2), (w2 * b).mean() * b, padding=1))


def test_more_weight_bases_fit_the_weights_better_and_alpha_is_the_least_squares_solution():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    errors = []
    for m in (1, 3, 5):
        q = MultiBaseWeight(m).train()
        err = (q(w) - w).pow(2).sum()
        errors.append(float(err))
        b = q.bases(w).reshape(m, -1).t().double()  # (n, M)
        lstsq = torch.linalg.lstsq(b, w.reshape(-1, 1).double()).solution.squeeze(1)
        torch.testing.assert_close(q.alpha.squeeze(0).double(), lstsq, rtol=1e-5, atol=1e-7)
    assert errors[0] > errors[1] > errors[2]


def test_alpha_is_refitted_in_training_and_frozen_at_eval():
    q = MultiBaseWeight(3).train()
    w = torch.randn(4, 2, 3, 3)
    q(w)
    fitted = q.alpha.clone()
    q.eval()
    w2 = w * 2.0  # a new latent tensor: eval keeps the training fit
    out = q(w2)
    torch.testing.assert_close(q.alpha, fitted)
    coef = fitted.t().reshape(3, 1, 1, 1, 1)
    torch.testing.assert_close(out, (coef * q.bases(w2)).sum(0))
    q.train()
    q(w2)
    torch.testing.assert_close(q.alpha, 2.0 * fitted)  # refit: the bases are scale-free, alpha scales


def test_weight_gradient_is_sum_of_alpha_times_base_gradients():
    q = MultiBaseWeight(2).train()
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    g = torch.randn(3, 2, 3, 3)
    q(w).backward(g)
    a = q.alpha.squeeze(0)
    # ABC-Net's dL/dW = sum_m alpha_m dL/dB_m, with dL/dB_m the gradient w.r.t. the unscaled base's conv (= g here)
    torch.testing.assert_close(w.grad, a.sum() * g)


def test_shifted_activations_thresholds_and_their_straight_through_gradient():
    q = MultiShiftActivation(3)
    # initial thresholds 0.5 - v spread over (-1, 1): -0.5, 0, 0.5; betas 1/3
    torch.testing.assert_close(0.5 - q.shift.detach(), torch.tensor([-0.5, 0.0, 0.5]))
    x = torch.tensor([-0.7, -0.2, 0.0, 0.3, 0.9], requires_grad=True)
    a = q(x)
    assert a.tolist() == [[-1, 1, 1, 1, 1], [-1, -1, 1, 1, 1], [-1, -1, -1, -1, 1]]
    r = q.combine(a)
    torch.testing.assert_close(r, a.sum(0) / 3)
    r.sum().backward()
    # gradient 1[0 <= x + v_n <= 1] times beta_n: v = (1, 0.5, 0)
    v = torch.tensor([1.0, 0.5, 0.0]).view(3, 1)
    mask = ((x.detach() + v >= 0) & (x.detach() + v <= 1)).float()
    torch.testing.assert_close(x.grad, (mask / 3).sum(0))
    torch.testing.assert_close(q.shift.grad, (mask / 3).sum(1))
    torch.testing.assert_close(q.beta.grad, a.detach().sum(1))


def test_one_activation_base_is_plain_sign():
    q = MultiShiftActivation(1)
    x = torch.randn(100)
    assert torch.equal(q(x)[0], binary_sign(x))


@pytest.mark.parametrize("bad", [{"weight_bases": 0}, {"activation_bases": 0}, {"abc_scope": "filter"}])
def test_bad_bases_are_clear_errors(bad):
    with pytest.raises(ValueError, match="ABC-Net"):
        timm.create_model("abcnet_resnet18_cifar", **bad)


def test_costs_count_m_times_n_binary_convs_and_m_weight_planes():
    one = profile_model(timm.create_model("abcnet_resnet18"), (3, 224, 224))
    five = profile_model(timm.create_model("abcnet_resnet18", weight_bases=5, activation_bases=5), (3, 224, 224))
    three = profile_model(timm.create_model("abcnet_resnet18", weight_bases=3, activation_bases=1), (3, 224, 224))
    # hand recount: (1, 1) = a binary ResNet-18's 1.676e9 BOPs + 1.378e8 FLOPs; (5, 5): 25x the BOPs = 7.93e8 OPs
    assert abs(one.bops - 1.676e9) / 1.676e9 < 0.01 and abs(one.flops - 1.378e8) / 1.378e8 < 0.01
    assert five.bops == 25 * one.bops and five.flops == one.flops
    assert abs(five.ops - 7.93e8) / 7.93e8 < 0.01
    assert three.params_binary == 3 * one.params_binary  # M bases stored per weight
    assert one.audit["binary_inputs_in_alphabet"] and five.audit["binary_layers"] == 16


def test_abcnet_resnet34_has_the_resnet34_layout():
    m = timm.create_model("abcnet_resnet34_cifar", widths=(8, 16, 32, 64))
    assert [len(s) for s in (m.layer1, m.layer2, m.layer3, m.layer4)] == [3, 4, 6, 3]
    assert sum(isinstance(c, ABCConv2d) for c in m.modules()) == 32
