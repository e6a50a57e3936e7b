"""The binarised DARTS search space beside S_B: its ops, the supernet over it, derivation and final networks.

Kim, Singh, Choi, ECCV 2020 claim that separable convs are detrimental to binary networks; the "darts" space (Liu et
al., ICLR 2019, with every conv binarised as S_B's) is the comparison that tests it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from methods.binary import BinaryConv2d, XnorWeight, int8_conv
from methods.bnas import DARTS_PRIMITIVES, PRIMITIVES, SPACES, Genotype, GenotypeError
from methods.bnas.genotypes import ALL_PRIMITIVES, BATS_PRIMITIVES, genotype_from_json, genotype_to_json
from methods.bnas.network import BnasCell, BnasNetwork
from methods.bnas.operations import (
    OP_SPECS,
    BinDilSepConv,
    BinFactorizedReduce,
    BinSepConv,
    DepthwiseXnorWeight,
    build_op,
    conv_geometry,
)
from methods.bnas.search import derive_genotype
from methods.bnas.search_cell import edge_index
from methods.bnas.supernet import SuperNet, release_fp_tail
from methods.bnas.supernet_shared import StateOps

NEW_CONV_OPS = ("bin_sep_conv_3x3", "bin_sep_conv_5x5", "bin_dil_sep_conv_3x3", "bin_dil_sep_conv_5x5")
# (number of convs, number of depthwise convs) per op at stride 2 (skip_connect: the factorized reduction)
CONV_COUNTS = {
    "bin_sep_conv_3x3": (4, 2),
    "bin_sep_conv_5x5": (4, 2),
    "bin_dil_sep_conv_3x3": (2, 1),
    "bin_dil_sep_conv_5x5": (2, 1),
    "skip_connect": (2, 0),
}

# a hand-written genotype over darts-space ops (both cell types read both cell inputs: stride-2 ops in reduce)
DARTS_GENOTYPE = Genotype(
    normal=(
        ("bin_sep_conv_3x3", 0),
        ("skip_connect", 1),
        ("bin_dil_sep_conv_5x5", 0),
        ("max_pool_3x3", 2),
        ("bin_sep_conv_5x5", 1),
        ("bin_dil_sep_conv_3x3", 3),
        ("avg_pool_3x3", 2),
        ("none", 4),
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=(
        ("skip_connect", 0),
        ("bin_sep_conv_3x3", 1),
        ("bin_dil_sep_conv_5x5", 0),
        ("skip_connect", 2),
        ("max_pool_3x3", 1),
        ("bin_sep_conv_5x5", 3),
        ("bin_dil_sep_conv_3x3", 4),
        ("avg_pool_3x3", 0),
    ),
    reduce_concat=(2, 3, 4, 5),
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread (two threads on a loaded 2-core machine stall on every small op)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _record_convs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Every F.conv2d call's (input, weight, groups), with the int8 forward off so that every conv goes through it."""
    monkeypatch.setattr(int8_conv, "_enabled", False)
    calls: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    conv2d = F.conv2d

    def spy(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
        calls.append((x.detach().clone(), w.detach().clone(), groups))
        return conv2d(x, w, bias, stride, padding, dilation, groups)

    monkeypatch.setattr(F, "conv2d", spy)
    return calls


def _is_xnor(w: torch.Tensor) -> bool:
    """Every output filter of w is +-alpha_c with alpha_c > 0."""
    a = w.abs().amax(dim=(1, 2, 3), keepdim=True)
    return bool((a > 0).all()) and torch.equal(w.abs(), a.expand_as(w))


def test_the_spaces_and_their_ops():
    assert SPACES == {"bnas": PRIMITIVES, "darts": DARTS_PRIMITIVES, "bats": BATS_PRIMITIVES}
    assert DARTS_PRIMITIVES == (
        "none",
        "max_pool_3x3",
        "avg_pool_3x3",
        "skip_connect",
        "bin_sep_conv_3x3",
        "bin_sep_conv_5x5",
        "bin_dil_sep_conv_3x3",
        "bin_dil_sep_conv_5x5",
    )
    assert ALL_PRIMITIVES == PRIMITIVES + ("skip_connect",) + NEW_CONV_OPS + BATS_PRIMITIVES[4:]
    assert set(ALL_PRIMITIVES) == set(OP_SPECS)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", NEW_CONV_OPS + ("skip_connect",))
def test_new_ops_keep_or_halve_the_shape_and_every_conv_is_binary(name, stride, monkeypatch):
    torch.manual_seed(0)
    c = 6
    op = build_op(name, c, stride, True)
    x = torch.randn(2, c, 9, 9)  # odd: the stride-2 ops give ceil(9 / 2) = 5, as Zeroise and the pools
    if name == "skip_connect" and stride == 1:
        assert isinstance(op, nn.Identity) and op(x) is x  # the real identity
        return
    calls = _record_convs(monkeypatch)
    y = op(x)
    assert y.shape == ((2, c, 9, 9) if stride == 1 else (2, c, 5, 5))
    assert (y >= 0).all()  # every conv is followed by a ReLU
    n_convs, n_depthwise = CONV_COUNTS[name] if stride == 2 or name != "skip_connect" else (0, 0)
    convs = [m for m in op.modules() if isinstance(m, BinaryConv2d)]
    assert len(convs) == len(calls) == n_convs
    assert all(m.binary_input and m.binary_weight for m in convs)
    assert sum(g == c for _, _, g in calls) == n_depthwise and all(g in (1, c) for _, _, g in calls)
    for xi, wi, g in calls:
        assert set(xi.unique().tolist()) == {-1.0, 1.0}  # the conv's input: exactly +-1
        assert _is_xnor(wi)  # its weight: +-alpha per output filter
        assert wi.shape[1] == (1 if g == c else c)
    depthwise = [m for m in convs if m.groups > 1]
    assert all(isinstance(m.weight_quantizer, DepthwiseXnorWeight) for m in depthwise)
    assert all(type(m.weight_quantizer) is XnorWeight for m in convs if m.groups == 1)


def test_depthwise_binary_conv_takes_the_float_path_and_gets_gradients():
    torch.manual_seed(0)
    op = build_op("bin_dil_sep_conv_3x3", 4, 1, True)
    dw = op[0].conv
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    assert dw.groups == 4 and not dw._int8_ok(torch.ones(2, 4, 8, 8))
    assert op[1].conv._int8_ok(torch.ones(2, 4, 8, 8)) == int8_conv.int8_conv_enabled()
    # the depthwise conv alone equals F.conv2d(sign(BN(x)), alpha * sign(W)) with groups = C
    h = op[0].bn(x)
    w = dw.weight_quantizer(dw.weight)
    want = F.relu(F.conv2d(torch.where(h >= 0, 1.0, -1.0), w, None, 1, 2, 2, 4))
    torch.testing.assert_close(op[0](x), want)
    op(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for m in (op[0].conv, op[1].conv):
        assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0
    # no centring over the single input channel (it would zero every latent weight)
    assert dw.weight.abs().amin() > 0


def test_depthwise_xnor_weight_is_the_exact_gradient_times_k_squared():
    torch.manual_seed(0)
    w = (0.3 * torch.randn(4, 1, 3, 3)).requires_grad_()
    w2 = w.detach().clone().requires_grad_()
    g = torch.randn(4, 1, 3, 3)
    q, ref = DepthwiseXnorWeight(), XnorWeight(center=False, clamp=True, grad="exact")
    out, out_ref = q(w), ref(w2)
    torch.testing.assert_close(out, out_ref)
    assert _is_xnor(out)
    (out * g).sum().backward()
    (out_ref * g).sum().backward()
    torch.testing.assert_close(w.grad, 9.0 * w2.grad)


def test_darts_supernet_forward_backward_and_derivation():
    torch.manual_seed(0)
    net = SuperNet(init_channels=4, layers=3, space="darts", impl="reference")
    assert net.space == "darts" and net.primitives == DARTS_PRIMITIVES
    assert net.alphas_normal.shape == net.alphas_reduce.shape == (14, 8)
    # search ops are the final ops with affine-free BN; pools with a BN after them
    normal, reduce = net.cells[0], net.cells[1]
    assert not normal.reduction and reduce.reduction
    assert isinstance(normal.edges[0].op("skip_connect"), nn.Identity)
    assert isinstance(reduce.edges[0].op("skip_connect"), BinFactorizedReduce)
    assert isinstance(reduce.edges[edge_index(1, 0)].op("skip_connect"), BinFactorizedReduce)
    assert isinstance(reduce.edges[edge_index(1, 2)].op("skip_connect"), nn.Identity)  # node 0 -> node 1: stride 1
    assert isinstance(normal.edges[0].op("bin_sep_conv_5x5"), BinSepConv)
    assert isinstance(normal.edges[0].op("bin_dil_sep_conv_3x3"), BinDilSepConv)
    assert isinstance(normal.edges[0].op("max_pool_3x3")[1], nn.BatchNorm2d)
    edge_bns = [m for e in normal.edges for m in e.modules() if isinstance(m, nn.BatchNorm2d)]
    assert edge_bns and not any(m.affine for m in edge_bns)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    logits = net(x)
    assert logits.shape == (2, 10)
    F.cross_entropy(logits, torch.tensor([1, 2])).backward()
    for a in net.arch_parameters():
        assert a.grad is not None and a.grad.shape == (14, 8)
        assert torch.isfinite(a.grad).all() and (a.grad != 0).all()
    dw = normal.edges[0].op("bin_sep_conv_3x3")[0].conv
    assert dw.weight.grad is not None and dw.weight.grad.abs().sum() > 0
    # derivation: darts ops only; alphas favouring one op give exactly that op
    g = derive_genotype(net.alphas_normal, net.alphas_reduce, net.primitives)
    assert {op for op, _ in g.normal + g.reduce} <= set(DARTS_PRIMITIVES)
    g.validate()
    with torch.no_grad():
        an, ar = torch.zeros(14, 8), torch.zeros(14, 8)
        an[:, DARTS_PRIMITIVES.index("bin_sep_conv_3x3")] = 2.0
        ar[:, DARTS_PRIMITIVES.index("skip_connect")] = 2.0
        ar[:, 0] = 3.0  # Zeroise strongest in reduce: kept by BNAS, skipped with exclude_zeroise (DARTS)
    g = derive_genotype(an, ar, net.primitives)
    assert {op for op, _ in g.normal} == {"bin_sep_conv_3x3"} and {op for op, _ in g.reduce} == {"none"}
    g = derive_genotype(an, ar, net.primitives, exclude_zeroise=True)
    assert {op for op, _ in g.reduce} == {"skip_connect"}
    assert genotype_from_json(genotype_to_json(g)) == g


def test_darts_no_zeroise_has_seven_columns():
    net = SuperNet(init_channels=4, layers=3, space="darts", impl="reference", exclude_zeroise=True)
    assert net.primitives == DARTS_PRIMITIVES[1:] and "none" not in net.primitives
    assert net.alphas_normal.shape == net.alphas_reduce.shape == (14, 7)
    assert len(net.cells[0].edges[0].ops) == 7


def test_unknown_space_and_unsupported_combinations_are_refused():
    with pytest.raises(ValueError, match=r"unknown search space 'nasnet'; expected one of 'bnas', 'darts'"):
        SuperNet(init_channels=4, layers=3, space="nasnet")
    with pytest.raises(ValueError, match=r"impl='shared' supports only the 'bnas'.*use impl='reference'"):
        SuperNet(init_channels=4, layers=3, space="darts", impl="shared")
    with pytest.raises(ValueError, match="official_fp_tail .* not defined for space 'darts'"):
        SuperNet(init_channels=4, layers=3, space="darts", impl="reference", official_fp_tail=True)
    with pytest.raises(ValueError, match=r"need impl='reference'"):
        StateOps(4, 1, 2, DARTS_PRIMITIVES)
    with pytest.raises(ValueError, match="not a single-conv op of S_B"):
        conv_geometry("bin_dil_sep_conv_3x3")
    net = SuperNet(init_channels=4, layers=3, space="darts", impl="reference")
    with pytest.raises(ValueError, match="defined for S_B only"):
        release_fp_tail(net)
    with pytest.raises(ValueError, match="has no single conv"):
        net.cells[0].edges[0].conv("bin_sep_conv_3x3")
    # the default is unchanged: S_B, shared
    assert SuperNet(init_channels=4, layers=3).primitives == PRIMITIVES


def test_bnas_network_from_a_darts_genotype_runs_forward_and_backward():
    torch.manual_seed(0)
    net = BnasNetwork(DARTS_GENOTYPE, init_channels=4, layers=3, num_classes=10)
    normal, reduce = net.cells[0], net.cells[1]
    assert reduce.reduction and not normal.reduction
    assert isinstance(normal.ops[1], nn.Identity)  # skip_connect from c_{k-1}, stride 1
    assert isinstance(reduce.ops[0], BinFactorizedReduce)  # skip_connect from c_{k-2} in a reduction cell
    assert isinstance(reduce.ops[3], nn.Identity)  # skip_connect from node 0: stride 1
    assert isinstance(normal.ops[0], BinSepConv) and isinstance(reduce.ops[2], BinDilSepConv)
    bns = [m for cell in net.cells for op in cell.ops for m in op.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.affine for m in bns)
    net.train()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    logits = net(x)
    assert logits.shape == (2, 10)
    F.cross_entropy(logits, torch.tensor([3, 4])).backward()
    convs = [m for cell in net.cells for op in cell.ops for m in op.modules() if isinstance(m, BinaryConv2d)]
    assert len(convs) == 3 * (4 + 2 + 4 + 2) + 2 * 2  # 3 cells x (sep, dil sep, sep, dil sep) + 2 reduction FRs
    for m in convs:
        assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0
    net.drop_path_prob = 0.2  # (the gradients above are without it: it may drop an op for both images)
    assert torch.isfinite(net(x)).all()
    net.eval()
    with torch.no_grad():
        assert torch.isfinite(net(x)).all()


def test_drop_path_spares_identity_ops_as_in_darts():
    torch.manual_seed(0)
    cell = BnasCell(DARTS_GENOTYPE, 8, 8, 4, reduction=False, reduction_prev=False, first=True)
    cell.train()
    s0, s1 = torch.randn(2, 8, 8, 8), torch.randn(2, 8, 8, 8)
    out = cell(s0, s1, drop_prob=1.0)  # every op dropped except the identity
    # node 0 = bin_sep_conv_3x3(c_{k-2}) [dropped] + skip_connect(c_{k-1}) = preprocess1(s1)
    torch.testing.assert_close(out[:, :4], cell.preprocess1(s1))
    assert out[:, :4].abs().sum() > 0


def test_genotype_validation_accepts_either_space_and_refuses_other_ops():
    assert DARTS_GENOTYPE.validate() is DARTS_GENOTYPE
    bad = DARTS_GENOTYPE._replace(normal=(("sep_conv_3x3", 0),) + DARTS_GENOTYPE.normal[1:])
    with pytest.raises(GenotypeError, match=r"genotype.normal\[0\]: unknown op 'sep_conv_3x3'") as e:
        bad.validate()
    msg = str(e.value)
    assert "\n" not in msg and "bin_sep_conv_3x3" in msg and "bin_conv_3x3" in msg
    with pytest.raises(GenotypeError, match="unknown op 'sep_conv_3x3'"):
        BnasNetwork(bad, init_channels=4, layers=3)
    with pytest.raises(GenotypeError, match="unknown op 'sep_conv_3x3'"):
        genotype_from_json(genotype_to_json(DARTS_GENOTYPE).replace("bin_sep_conv_3x3", "sep_conv_3x3", 1))
    # a space can still be asked for explicitly
    with pytest.raises(GenotypeError, match="unknown op 'bin_sep_conv_3x3'"):
        DARTS_GENOTYPE.validate(PRIMITIVES)
