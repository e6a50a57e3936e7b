"""BONN (methods/binary/bayes.py, methods/baselines/bonn.py): the scaled sign and its gradient, Algorithm 5's
initialisation, the Bayesian kernel loss against a hand computation, and the network's size and cost."""

from __future__ import annotations

import pytest
import timm
import torch

from methods.binary import BinaryConv2d
from methods.binary.bayes import BayesWeight


def _kernel(seed: int = 0) -> torch.Tensor:
    return torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(seed)) * 0.6


def test_the_forward_is_one_scale_per_layer_times_sign():
    k = _kernel()
    q = BayesWeight(4)
    with torch.no_grad():
        q.w.copy_(torch.tensor([1.0, 2.0, 3.0, 6.0]))  # mean 3
    sign = torch.where(k >= 0, 1.0, -1.0)
    assert torch.allclose(q(k), sign / 3.0)
    assert torch.allclose(BayesWeight(4, "mean_w").requires_grad_(False)(k), sign)  # w = ones: mean 1
    with pytest.raises(ValueError, match="scale_form"):
        BayesWeight(4, "max_w")


def test_the_gradient_is_the_clip_ste_times_the_scale_and_reaches_w():
    k = _kernel(1).requires_grad_(True)
    q = BayesWeight(4)
    with torch.no_grad():
        q.w.fill_(2.0)
    g = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(2))
    (q(k) * g).sum().backward()
    assert torch.allclose(k.grad, g * 0.5 * (k.detach().abs() <= 1.0))
    sign = torch.where(k.detach() >= 0, 1.0, -1.0)
    # d/dw_o of (1/mean(w)) sum g sign = -(sum g sign) / (4 mean(w)^2)
    assert torch.allclose(q.w.grad, torch.full((4,), -float((g * sign).sum()) / (4 * 4.0)), atol=1e-5)


def test_algorithm_5_initialisation_and_the_kernel_loss_by_hand():
    k = _kernel(3)
    q = BayesWeight(4)
    q.init_from_kernel(k)
    pos, neg = k[k > 0], -k[k <= 0]
    assert torch.allclose(q.mu, torch.stack([pos.mean(), neg.mean()]))
    assert torch.allclose(q.log_var.exp(), torch.stack([pos.var(), neg.var()]), rtol=1e-5)
    assert torch.allclose(q.w, 1.0 / k.abs().mean(dim=(1, 2, 3)))
    nu = 0.3
    hand = 0.0
    q.requires_grad_(False)  # a hand computation: plain floats
    for o in range(4):
        for v in k[o].flatten().tolist():
            s = 1.0 if v >= 0 else -1.0
            hand += (s - float(q.w[o].detach()) * v) ** 2
            if v > 0:
                hand += nu * ((v - float(q.mu[0])) ** 2 / float(q.log_var[0].exp()) + float(q.log_var[0]))
            else:
                hand += nu * ((v + float(q.mu[1])) ** 2 / float(q.log_var[1].exp()) + float(q.log_var[1]))
    assert float(q.kernel_loss(k, nu)) == pytest.approx(hand, rel=1e-5)


def test_bonn_resnet18_size_and_cost():
    from harness.costs import profile_model

    m = timm.create_model("bonn_resnet18")
    convs = [x for x in m.modules() if isinstance(x, BinaryConv2d) and isinstance(x.weight_quantizer, BayesWeight)]
    assert len(convs) == 16
    # Bi-Real-18 (11,689,512) plus per binary conv a reconstruction vector (C_out) and the prior's mu+-, log sigma+-^2
    assert sum(p.numel() for p in m.parameters()) == 11_689_512 + 4 * (64 + 128 + 256 + 512) + 16 * 4
    assert profile_model(m, (3, 224, 224)).ops / 1e8 == pytest.approx(1.64, abs=0.01)  # spec: about 1.63e8
