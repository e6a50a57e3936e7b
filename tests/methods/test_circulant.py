"""`methods/binary/circulant.py` and `methods/baselines/cbcn.py`: CBCN's filter rotation, binarisation and counts."""

from __future__ import annotations

import timm
import torch

import methods  # noqa: F401
from harness.costs import profile_model
from methods.binary.circulant import CirculantBinaryConv2d, LayerScaleApproxSign, circulant_expand


def _clockwise(k: torch.Tensor) -> torch.Tensor:
    """A 3x3 kernel rotated by 90 degrees clockwise, by hand: new[r][c] = old[2 - c][r]."""
    return torch.tensor([[float(k[2 - c][r]) for c in range(3)] for r in range(3)])


def test_clockwise_rotation_moves_top_left_to_top_right():
    k = torch.arange(9.0).view(3, 3)
    assert _clockwise(k).tolist() == [[6.0, 3.0, 0.0], [7.0, 4.0, 1.0], [8.0, 5.0, 2.0]]


def test_expansion_equals_a_hand_built_rotation_of_every_orientation():
    torch.manual_seed(0)
    p = torch.randn(2, 3, 4, 3, 3)
    expected = torch.zeros(8, 12, 3, 3)
    for o in range(2):
        for i in range(3):
            for r in range(4):
                for j in range(4):
                    k = p[o, i, r]
                    for _ in range(j):
                        k = _clockwise(k)
                    expected[4 * o + j, 4 * i + (r + j) % 4] = k
    assert torch.equal(circulant_expand(p), expected)


def test_conv_stores_the_filter_bank_and_applies_the_binarised_expansion():
    torch.manual_seed(0)
    conv = CirculantBinaryConv2d(2, 3, weight_quantizer=LayerScaleApproxSign())
    assert conv.weight.shape == (3, 8, 3, 3) and (conv.in_channels, conv.out_channels) == (8, 12)
    x = torch.randn(1, 8, 5, 5)
    w = circulant_expand(conv.weight.detach().view(3, 2, 4, 3, 3))
    expected = torch.nn.functional.conv2d(
        torch.where(x >= 0, 1.0, -1.0), w.abs().mean() * torch.where(w >= 0, 1.0, -1.0), padding=1
    )
    torch.testing.assert_close(conv(x), expected)


def test_alpha_gradient_flows_unless_switched_off():
    torch.manual_seed(0)
    w = torch.randn(4, 2, 3, 3)
    g = torch.randn(4, 2, 3, 3)
    grads = {}
    for flag in (True, False):
        wt = w.clone().requires_grad_(True)
        LayerScaleApproxSign(alpha_grad=flag)(wt).backward(g)
        grads[flag] = wt.grad
    approx = (2 - 2 * w.abs()).clamp_min(0)
    torch.testing.assert_close(grads[False], w.abs().mean() * g * approx)
    # with alpha's gradient: + sign(W) / n * sum(g * sign(W))
    extra = torch.sign(w) / w.numel() * (g * torch.sign(w)).sum()
    torch.testing.assert_close(grads[True], grads[False] + extra)


def test_costs_released_network_and_the_poster_figure():
    code = profile_model(timm.create_model("cbcn_resnet18"), (3, 224, 224))
    bireal = profile_model(timm.create_model("bireal_resnet18"), (3, 224, 224))
    # hand recount of the release: 26.8e9 BOPs + 17.07e8 FLOPs = 21.3e8 OPs (1x1 shortcut conv before its pool)
    assert abs(code.bops - 26.8e9) / 26.8e9 < 0.005 and abs(code.flops - 17.07e8) / 17.07e8 < 0.005
    assert abs(code.ops - 21.3e8) / 21.3e8 < 0.005
    assert code.bops == 16 * bireal.bops  # 4x the channels on both sides of every binary conv
    assert abs(4 * bireal.ops - 6.56e8) / 6.56e8 < 0.005  # the poster's 6.56e8 is 4 x Bi-Real-18
    reordered = profile_model(timm.create_model("cbcn_resnet18", shortcut_order="pool_conv_bn"), (3, 224, 224))
    assert abs(reordered.ops - 12.0e8) / 12.0e8 < 0.005
    assert code.params_binary == 4 * bireal.params_binary  # only the filter banks are stored: 43.9M binary weights
    assert abs(code.params_binary - 43.9e6) / 43.9e6 < 0.005
    assert abs(code.params_real - 4.8e6) / 4.8e6 < 0.05  # the spec's "about 4.8M" real (shortcuts, stem, FC, BN)
    assert code.audit["binary_inputs_in_alphabet"] and code.audit["binary_layers"] == 16


def test_model_init_keeps_the_expanded_convs_kaiming_std():
    """The network-wide He init must use the applied conv's fan-out (4 C_out k k), not the stored bank's first dim."""
    torch.manual_seed(0)
    model = timm.create_model("cbcn_resnet18_cifar", num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, CirculantBinaryConv2d)]
    assert convs
    for m in convs:
        expected = (2.0 / (m.out_channels * 9)) ** 0.5  # out_channels is the applied (4x) count
        assert abs(m.weight.std().item() / expected - 1.0) < 0.05, (m.weight.shape, m.weight.std().item(), expected)
