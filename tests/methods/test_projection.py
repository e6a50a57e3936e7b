"""PCNN (methods/binary/projection.py, methods/baselines/pcnn.py): the projection's forward and gradients against a
hand computation, the ternary (TWN) projection, the projection loss's closed-form gradients against autograd, and the
ResNet-18's size and cost against the spec's recount."""

from __future__ import annotations

import pytest
import timm
import torch

from methods.binary import BinaryConv2d
from methods.binary.projection import TWN_THRESHOLD, ProjectionWeight, projection_loss_grads, projection_params


def _kernel(seed: int = 0) -> torch.Tensor:
    return torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(seed)) * 0.8


def test_the_binary_projection_is_a_sign_of_mean_w_times_c():
    c = _kernel()
    q = ProjectionWeight(3)
    with torch.no_grad():
        q.proj.copy_(torch.linspace(-0.5, 1.5, 9).reshape(3, 3))  # mean 0.5 > 0
    a = c.abs().mean()
    assert torch.equal(q(c), a * torch.where(c >= 0, 1.0, -1.0))
    with torch.no_grad():
        q.proj.mul_(-1.0)  # mean < 0: every sign flips
    assert torch.equal(q(c), -a * torch.where(c >= 0, 1.0, -1.0))


def test_the_backward_keeps_the_full_projection_matrix():
    c = _kernel(1).requires_grad_(True)
    q = ProjectionWeight(3)
    w = torch.tensor([[0.5, 1.0, 2.0], [1.5, -1.0, 0.25], [1.0, 3.0, 0.5]])
    with torch.no_grad():
        q.proj.copy_(w)
    g = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(2))
    (q(c) * g).sum().backward()
    u = w * c.detach()
    mask = (u.abs() <= 1.0).float()
    assert torch.allclose(c.grad, g * mask * w)
    hand = torch.zeros(3, 3)
    for o in range(4):
        for i in range(3):
            hand += g[o, i] * mask[o, i] * c.detach()[o, i]
    assert torch.allclose(q.proj.grad, hand, atol=1e-6)
    assert 0.0 < float(mask.mean()) < 1.0  # the indicator cuts somewhere: the test sees it


def test_the_ternary_projection_is_twn_on_the_projected_kernel():
    c = _kernel(3)
    q = ProjectionWeight(3, levels=3)
    out = q(c)  # W = ones: u = C
    delta = TWN_THRESHOLD * c.abs().mean()
    keep = c.abs() > delta
    d = c.abs()[keep].mean()
    assert torch.allclose(out, d * torch.sign(c) * keep)
    assert torch.allclose(out.abs()[keep], d.expand(int(keep.sum()))) and bool((out[~keep] == 0).all())
    assert (q.bit_width, q.planes) == (2, 2)
    with pytest.raises(ValueError, match="levels must be 2"):
        ProjectionWeight(3, levels=4)


def test_the_projection_loss_gradients_are_those_of_autograd():
    c = _kernel(4).requires_grad_(True)
    w = (torch.rand(3, 3, generator=torch.Generator().manual_seed(5)) + 0.5).requires_grad_(True)
    with torch.no_grad():
        q = ProjectionWeight(3)(c)
    dq = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(6))
    eta, lam = 0.05, 1e-4
    lp = 0.5 * lam * (q - w * (c + eta * dq)).pow(2).sum()  # q and dq constants, as the paper's derivation
    gc, gw = torch.autograd.grad(lp, (c, w))
    value, hc, hw = projection_loss_grads(c.detach(), w.detach(), q, dq, eta, lam)
    assert float(value) == pytest.approx(float(lp.detach()), rel=1e-6)
    assert torch.allclose(hc, gc, atol=1e-10) and torch.allclose(hw, gw, atol=1e-10)


def test_pcnn_resnet18_size_cost_and_stages():
    from harness.costs import profile_model

    m = timm.create_model("pcnn_resnet18")
    # ResNet-18 (11,689,512) plus a 3x3 projection matrix in each of its 16 binary convs
    assert sum(p.numel() for p in m.parameters()) == 11_689_512 + 16 * 9
    assert len(projection_params(m)) == 16
    convs = [x for x in m.modules() if isinstance(x, BinaryConv2d)]
    assert len(convs) == 16 and all(isinstance(x.weight_quantizer, ProjectionWeight) for x in convs)
    cost = profile_model(m, (3, 224, 224))
    assert cost.ops / 1e8 == pytest.approx(1.64, abs=0.01)  # spec recount, real 1x1 downsample; poster ~1.63
    ternary = timm.create_model("pcnn_resnet18_cifar", weight_levels=3)
    binary = timm.create_model("pcnn_resnet18_cifar")
    binary.load_state_dict(ternary.state_dict())  # the progressive stage's model initialises the binary one
