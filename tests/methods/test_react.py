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


def test_reactnet_a_counts_as_the_recount_with_only_stem_and_classifier_real():
    import timm

    import methods  # noqa: F401
    from harness.costs import profile_model

    m = timm.create_model("reactnet_a")
    p = profile_model(m, (3, 224, 224), "bireal")
    # hand recount: 4.817e9 BOPs + 0.119e8 FLOPs = 0.871e8 OPs
    assert abs(p.bops - 4.817e9) / 4.817e9 < 0.005 and abs(p.flops - 0.119e8) / 0.119e8 < 0.01
    assert abs(p.ops - 0.871e8) / 0.871e8 < 0.005
    assert p.audit["binary_layers"] == 26 and p.audit["binary_inputs_in_alphabet"]
    assert m.real_layers() == ["conv_stem", "fc"]
    widths = [b.conv1x1.out_channels for b in m.blocks]
    assert widths == [64, 128, 128, 256, 256] + [512] * 6 + [1024] * 2
    assert [b.conv3x3.stride[0] for b in m.blocks] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]


def test_reactnet_a_widening_block_is_two_1x1_convs_added_to_the_input_and_concatenated():
    from methods.baselines.reactnet import ReActNetABlock

    torch.manual_seed(0)
    b = ReActNetABlock(4, 8, 1).eval()
    x = torch.randn(2, 4, 5, 5)
    o1 = b.act1(b.bn1(b.conv3x3(x)) + x)
    y = b.bn2(b.conv1x1(o1))
    # each half of the 2C-filter conv (with its half of the BN) is one of the release's two convs, each plus o1
    expected = b.act2(torch.cat([y[:, :4] + o1, y[:, 4:] + o1], dim=1))
    torch.testing.assert_close(b(x), expected)


def test_release_weight_init_starts_every_binary_weight_at_plus_one():
    import timm

    import methods  # noqa: F401
    from methods.binary import BinaryConv2d

    m = timm.create_model("reactnet_a_cifar", width_mult=0.25, weight_init="release")
    convs = [c for c in m.modules() if isinstance(c, BinaryConv2d)]
    assert convs and all(bool((c.quantized_weight() > 0).all()) for c in convs)
    assert all(float(c.weight.max()) < 1e-3 and float(c.weight.min()) >= 0 for c in convs)
