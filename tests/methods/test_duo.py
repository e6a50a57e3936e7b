"""`methods/binary/duo.py` and `methods/baselines/binaryduo.py`: BinaryDuo's quantizers, exact decoupling, counts."""

from __future__ import annotations

import pytest
import timm
import torch

import methods  # noqa: F401
from harness.costs import profile_model
from methods.binary import BinaryConv2d
from methods.binary.duo import LayerScaleSign, PairSplit, UniformActivation, decouple

SMALL = {"widths": (16, 23, 45, 90), "last_width": 128}


def test_ternary_and_binary_activations_and_their_gradient():
    x = torch.tensor([-0.3, 0.0, 0.2, 0.25, 0.5, 0.74, 0.75, 1.0, 1.4], requires_grad=True)
    t = UniformActivation(3)(x)
    assert t.tolist() == [0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0]
    b = UniformActivation(2)(x)
    assert b.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    b.sum().backward()
    assert x.grad.tolist() == [0, 0, 1, 1, 1, 1, 1, 0, 0]  # 1 on 0 < x < 1
    assert UniformActivation(2).alphabet == (0.0, 1.0) and UniformActivation(3).planes == 2


def test_two_offset_binary_copies_sum_to_twice_the_ternary_value():
    x = torch.linspace(-0.5, 1.5, 2001).view(1, 1, -1, 1)
    pair = PairSplit(1)(x)  # (1, 2, n, 1): copies offset by -1/4 and +1/4
    torch.testing.assert_close(pair.sum(1, keepdim=True), 2 * UniformActivation(3)(x))


def test_layer_scale_sign_has_one_scale_and_a_straight_through_gradient():
    w = torch.tensor([[[[0.5, -2.0]]], [[[0.1, -0.2]]]], requires_grad=True)
    wb = LayerScaleSign()(w)
    s = w.detach().abs().mean()
    torch.testing.assert_close(wb, s * torch.tensor([[[[1.0, -1.0]]], [[[1.0, -1.0]]]]))
    g = torch.randn_like(w)
    wb.backward(g)
    torch.testing.assert_close(w.grad, g)  # no clip mask (|w| = 2 passes)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_decoupled_network_computes_the_coupled_logits(mode):
    torch.manual_seed(0)
    coupled = timm.create_model("binaryduo_resnet18_cifar", **SMALL).double()
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    coupled.train()
    for _ in range(2):  # move the BN statistics off their init
        coupled(x)
    getattr(coupled, mode)()
    before = coupled(x).detach()
    n_ternary = sum(isinstance(m, BinaryConv2d) for m in coupled.modules())
    decouple(coupled)
    getattr(coupled, mode)()
    after = coupled(x).detach()
    torch.testing.assert_close(after, before, rtol=0, atol=1e-10)
    splits = [m for m in coupled.modules() if isinstance(m, BinaryConv2d)]
    assert len(splits) == n_ternary and all(isinstance(m.input_quantizer, PairSplit) for m in splits)
    assert before.argmax(1).tolist() == after.argmax(1).tolist()


def test_decoupled_variant_loads_a_decoupled_state_and_refuses_a_binary_network():
    coupled = timm.create_model("binaryduo_resnet18_cifar", **SMALL)
    decouple(coupled)
    fresh = timm.create_model("binaryduo_resnet18_cifar", decoupled=True, **SMALL)
    fresh.load_state_dict(coupled.state_dict())  # strict: the same tensors
    with pytest.raises(ValueError, match="no ternary-input conv"):
        decouple(timm.create_model("binaryduo_resnet18_cifar", activation_levels=2, **SMALL))


def test_costs_recount_and_the_audit_knows_the_zero_one_alphabet():
    coupled = profile_model(timm.create_model("binaryduo_resnet18"), (3, 224, 224))
    decoupled = profile_model(timm.create_model("binaryduo_resnet18", decoupled=True), (3, 224, 224))
    # hand recount of the decoupled ResNet-18 at widths 64/90/180/360: 2.197e9 BOPs + 1.294e8 FLOPs = 1.637e8 OPs
    for p in (coupled, decoupled):
        assert abs(p.bops - 2.197e9) / 2.197e9 < 0.001 and abs(p.flops - 1.294e8) / 1.294e8 < 0.001
        assert abs(p.ops - 1.637e8) / 1.637e8 < 0.001
        assert p.audit["binary_inputs_in_alphabet"] and p.audit["binary_layers"] == 16
    assert decoupled.audit["alphabets"] == ["{0, +1}"] and coupled.audit["alphabets"] == ["{0, +0.5, +1}"]


def test_the_audit_flags_inputs_outside_the_declared_alphabet():
    mislabelled = UniformActivation(2)
    mislabelled.alphabet = (-1.0, 1.0)  # claims +-1, gives {0, 1}
    model = torch.nn.Sequential(
        BinaryConv2d(3, 4, 3, 1, 1, input_quantizer=mislabelled, weight_quantizer=LayerScaleSign())
    )
    p = profile_model(model, (3, 8, 8))
    assert not p.audit["binary_inputs_in_alphabet"] and p.audit["non_binary_inputs"] == ["0"]


def test_binaryduo_layout():
    m = timm.create_model("binaryduo_resnet18")
    assert [s[0].conv1.out_channels for s in (m.layer1, m.layer2, m.layer3, m.layer4)] == [64, 90, 180, 360]
    assert m.layer4[-2].conv2.out_channels == 512 and m.layer4[-2].pad == 512 - 360 and m.fc.in_features == 512
    assert timm.create_model("binaryduo_resnet18", num_classes=10)(torch.randn(1, 3, 224, 224)).shape == (1, 10)
