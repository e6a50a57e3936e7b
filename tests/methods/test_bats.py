"""BATS's search space (Bulat, Martinez, Tzimiropoulos, ECCV 2020) in the harness's supernet: its grouped binary conv
op against a hand computation, the temperature-controlled softmax, the binary-first phases and the networks built from
a BATS cell."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from methods.binary import BinaryConv2d
from methods.bnas.genotypes import BATS_PRIMITIVES
from methods.bnas.network import BnasNetwork
from methods.bnas.operations import BatsGroupConv, bats_groups, build_op, channel_shuffle
from methods.bnas.search import BnasSearcher, derive_genotype
from methods.bnas.supernet import SuperNet


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0)


def test_bats_groups_are_twelve_where_the_width_allows_else_the_largest_divisor_below():
    assert [bats_groups(c) for c in (12, 24, 48, 8, 16, 32, 14, 7)] == [12, 12, 12, 8, 8, 8, 7, 7]


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(8.0).reshape(1, 8, 1, 1)
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert torch.equal(channel_shuffle(x, 3), x)  # 3 does not divide 8: unchanged


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dilation", [1, 2])
def test_group_conv_op_equals_a_hand_computation(stride, dilation):
    torch.manual_seed(0)
    c, k = 24, 3
    op = BatsGroupConv(c, k, stride, dilation * (k - 1) // 2, dilation).eval()
    with torch.no_grad():
        op.bn.running_mean.uniform_(-0.2, 0.2)
        op.bn.running_var.uniform_(0.5, 1.5)
        op.conv.scale.alpha.uniform_(0.5, 2.0)
        op.act.weight.uniform_(0.1, 0.4)
    x = torch.randn(2, c, 9, 9)
    h = F.batch_norm(x, op.bn.running_mean, op.bn.running_var, op.bn.weight, op.bn.bias, False, 0.0, op.bn.eps)
    w = op.conv.weight
    wb = w.abs().mean(dim=(1, 2, 3), keepdim=True) * _sign(w)  # alpha * sign(W), alpha per output filter
    y = F.conv2d(_sign(h), wb, None, stride, dilation * (k - 1) // 2, dilation, groups=12)
    y = y * op.conv.scale.alpha.view(1, c, 1, 1)
    y = F.prelu(y, op.act.weight)
    n, _, hh, ww = y.shape
    y = y.reshape(n, 4, c // 4, hh, ww).transpose(1, 2).reshape(n, c, hh, ww)
    if stride == 1:
        y = x + y
    assert op.conv.groups == 12
    torch.testing.assert_close(op(x), y, rtol=1e-5, atol=1e-5)


def test_group_conv_op_gradients_reach_latent_weights_scale_and_input():
    torch.manual_seed(1)
    op = build_op("bats_dil_group_conv_5x5", 16, 1, True)
    assert isinstance(op, BatsGroupConv) and op.conv.dilation == (2, 2) and op.conv.groups == 8
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    op(x).square().mean().backward()
    assert x.grad is not None and op.conv.weight.grad is not None and op.conv.scale.alpha.grad is not None
    assert op.conv.weight.grad.abs().sum() > 0


def test_bats_supernet_mixes_with_the_temperature_and_derives_from_the_same_weights():
    torch.manual_seed(2)
    net = SuperNet(8, 5, space="bats", impl="reference", skip=False, temperature=0.5)
    assert net.primitives == BATS_PRIMITIVES and net.alphas_normal.shape == (14, 8)
    with torch.no_grad():
        net.alphas_normal.normal_(0, 1)
        net.alphas_reduce.normal_(0, 1)
    x = torch.randn(2, 3, 16, 16)
    net.eval()
    out = net(x)
    hot = SuperNet(8, 5, space="bats", impl="reference", skip=False, temperature=1.0).eval()
    hot.load_state_dict(net.state_dict())
    with torch.no_grad():  # alpha / 0.5 at temperature 1 is the same mixture
        hot.alphas_normal.mul_(2)
        hot.alphas_reduce.mul_(2)
    torch.testing.assert_close(hot(x), out)
    s = BnasSearcher(
        net, epochs=2, lr=0.01, lr_min=0.0, momentum=0.9, weight_decay=0.0, arch_lr=1e-3, arch_betas=(0.5, 0.999),
        arch_weight_decay=0.0, lam=0.0, tau=1.0, official_entropy_bug=False, official_lr_offset=False,
    )  # fmt: skip
    assert s.genotype() == derive_genotype(2 * net.alphas_normal, 2 * net.alphas_reduce, BATS_PRIMITIVES)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SuperNet(8, 5, space="bats", impl="reference", temperature=0.0)


def test_binary_first_phase_runs_real_weights_then_binary_ones():
    torch.manual_seed(3)
    net = SuperNet(8, 3, space="bats", impl="reference", skip=False)
    convs = [m for m in net.cells.modules() if isinstance(m, BinaryConv2d) and m.binary_input]
    assert convs and all(m.binary_weight for m in convs)
    s = BnasSearcher(
        net, epochs=4, lr=0.01, lr_min=0.0, momentum=0.9, weight_decay=0.0, arch_lr=1e-3, arch_betas=(0.5, 0.999),
        arch_weight_decay=0.0, lam=0.0, tau=1.0, official_entropy_bug=False, official_lr_offset=False,
        real_weight_epochs=2,
    )  # fmt: skip
    phases = []
    for epoch in range(4):
        s.new_epoch(epoch)
        phases.append((all(not m.binary_weight for m in convs), all(m.binary_input for m in convs)))
    assert phases == [(True, True), (True, True), (False, True), (False, True)]


def test_network_from_a_bats_cell_trains_and_has_no_t_b_skip():
    torch.manual_seed(4)
    net = SuperNet(8, 5, space="bats", impl="reference", skip=False)
    g = derive_genotype(net.alphas_normal, net.alphas_reduce, net.primitives)
    m = BnasNetwork(g, init_channels=8, layers=5, skip=False)
    assert not any(cell.has_skip for cell in m.cells)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    loss = F.cross_entropy(m(x), y)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in m.classifier.parameters())


def test_switching_to_binary_weights_keeps_the_op_output_scale():
    """alpha * sign(W) has the latent weights' magnitude: the binary-first search's switch from real to binary weights
    does not rescale the ops (with plain sign weights, +-1 against latent weights ~0.1, it was ~10x)."""
    torch.manual_seed(5)
    op = BatsGroupConv(24, 3, 2, 1)  # stride 2: no identity skip to hide the conv's scale
    x = torch.randn(8, 24, 16, 16)
    with torch.no_grad():
        binary = op(x).std()
    quantizer, op.conv.weight_quantizer = op.conv.weight_quantizer, None
    with torch.no_grad():
        real = op(x).std()
    op.conv.weight_quantizer = quantizer
    assert 0.5 < float(binary / real) < 2.0
