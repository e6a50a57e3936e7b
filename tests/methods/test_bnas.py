"""BNAS genotypes, discrete networks, the search objective and derivation."""

from __future__ import annotations

import json

import pytest
import timm
import torch

import methods  # noqa: F401
from methods.bnas import PRIMITIVES, GenotypeError, get_genotype
from methods.bnas.genotypes import Genotype, genotype_from_json, genotype_hash, genotype_to_json
from methods.bnas.network import BnasCell


def test_search_space_is_exactly_the_seven_ops():
    assert PRIMITIVES == (
        "none",
        "max_pool_3x3",
        "avg_pool_3x3",
        "bin_dil_conv_3x3",
        "bin_dil_conv_5x5",
        "bin_conv_3x3",
        "bin_conv_5x5",
    )


@pytest.mark.parametrize("name,params", [("bnas_a", 5_578_252), ("bnas_f", 39_781_442)])
def test_parameter_counts_match_the_release_logs(name, params):
    m = timm.create_model(name)
    assert sum(p.numel() for p in m.parameters()) == params


def test_inferred_bnas_b_and_c_sizes():
    """BNAS-B/C's sizes are unpublished (INFERRED, methods/bnas/network.py): C near the 42.4M quoted for it, B between A
    and C, both BNAS-A's cell."""
    sizes = {n: sum(p.numel() for p in timm.create_model(n).parameters()) for n in ("bnas_a", "bnas_b", "bnas_c")}
    assert abs(sizes["bnas_c"] - 42.4e6) / 42.4e6 < 0.002
    assert sizes["bnas_a"] < sizes["bnas_b"] < sizes["bnas_c"]
    assert (sizes["bnas_b"], sizes["bnas_c"]) == (15_450_196, 42_360_532)
    assert timm.create_model("bnas_b").genotype == timm.create_model("bnas_a").genotype


def test_genotype_json_roundtrip_and_validation(tmp_path):
    for name in ("latest_cell_zeroise", "latest_cell"):
        g = get_genotype(name)
        assert genotype_from_json(genotype_to_json(g)) == g
        assert all(op in PRIMITIVES for op, _ in g.normal + g.reduce)
    p = tmp_path / "genotype.json"
    p.write_text(genotype_to_json(get_genotype("latest_cell")))
    assert genotype_from_json(p) == get_genotype("latest_cell")
    bad = genotype_to_json(get_genotype("latest_cell")).replace("bin_conv_3x3", "sep_conv_3x3", 1)
    with pytest.raises(GenotypeError, match="unknown op 'sep_conv_3x3'"):
        genotype_from_json(bad)
    g = get_genotype("latest_cell")
    with pytest.raises(GenotypeError, match="input 5 invalid for node 0"):
        Genotype(((g.normal[0][0], 5),) + g.normal[1:], g.normal_concat, g.reduce, g.reduce_concat).validate()
    with pytest.raises(GenotypeError, match="malformed"):
        genotype_from_json("{not json")
    with pytest.raises(GenotypeError, match="unknown genotype 'DARTS'"):
        get_genotype("DARTS")
    # the content hash: stable, checked on load, and a valid edit without updating it is refused
    d = json.loads(genotype_to_json(g))
    assert d["sha256"] == genotype_hash(g) and len(d["sha256"]) == 64
    d["normal"][0][0] = "bin_conv_5x5"
    with pytest.raises(GenotypeError, match="content hash mismatch"):
        genotype_from_json(json.dumps(d))
    del d["sha256"]
    assert genotype_from_json(json.dumps(d)).normal[0] == ("bin_conv_5x5", 1)
    with pytest.raises(GenotypeError, match=r"expected 8 \(op, input\) pairs"):
        genotype_from_json(json.dumps({**d, "normal": d["normal"][:7]}))


def _naive_cell_forward(cell: BnasCell, s0, s1):
    """The straightforward T_B cell: every op computed, Zeroise included, summed per node."""
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    for i in range(4):
        states.append(sum(cell.ops[k](states[cell.indices[k]]) for k in (2 * i, 2 * i + 1)))
    out = torch.cat([states[j] for j in cell.concat], dim=1)
    if not cell.has_skip:
        return out
    return out + (cell.preprocess_res(s1) if cell.preprocess_res is not None else s1)


@pytest.mark.parametrize("train", [False, True])
def test_skipping_zeroise_and_dead_preprocessing_changes_nothing(train):
    torch.manual_seed(0)
    m = timm.create_model("bnas_a", layers=5, init_channels=8).double()
    m.train(train)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    s0 = s1 = m.stem(x)
    for cell in m.cells:
        torch.manual_seed(1)
        fast = cell(s0, s1)
        torch.manual_seed(1)
        ref = _naive_cell_forward(cell, s0, s1)
        torch.testing.assert_close(fast, ref, rtol=0, atol=0)
        s0, s1 = s1, fast


def test_no_skip_switch_removes_the_template_skips():
    full = timm.create_model("bnas_a", layers=5, init_channels=8)
    ablated = timm.create_model("bnas_a", layers=5, init_channels=8, skip=False)
    assert all(c.has_skip == (i > 0) for i, c in enumerate(full.cells))
    assert not any(c.has_skip for c in ablated.cells) and all(c.preprocess_res is None for c in ablated.cells)


def test_weight_binary_false_keeps_real_weights_behind_binary_inputs():
    """Stage 1 of a multi-stage recipe (BNAS-D v2 Multi-Stage): the cell convs keep their binary inputs, their weights
    stay real; the binary network loads its state dict (stage 2's --init-from)."""
    from harness.costs import profile_model
    from methods.binary import BinaryConv2d

    torch.manual_seed(0)
    real = timm.create_model("bnas_a", layers=5, init_channels=8, weight_binary=False)
    binary = timm.create_model("bnas_a", layers=5, init_channels=8)
    convs = [m for m in real.cells.modules() if isinstance(m, BinaryConv2d)]
    assert convs and all(m.weight_quantizer is None and m.input_quantizer is not None for m in convs)
    assert profile_model(real, (3, 32, 32)).bops == 0 < profile_model(binary, (3, 32, 32)).bops
    binary.load_state_dict(real.state_dict())
    x = torch.randn(2, 3, 32, 32)
    real.eval(), binary.eval()
    assert not torch.allclose(real(x), binary(x))  # the same latent weights, binarised in one of them


def test_forward_backward_cifar_and_imagenet():
    m = timm.create_model("bnas_a", layers=5, init_channels=8)
    y = m(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.sum().backward()
    m = timm.create_model("bnas_d", layers=3, init_channels=16)
    y = m(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()
    y.sum().backward()


# --- search: supernet, objective, derivation ------------------------------------------------------------------------

import math  # noqa: E402

from _helpers import bnas_searcher  # noqa: E402

from harness.config import SearchConfig  # noqa: E402
from harness.searching import searcher_hyperparameters  # noqa: E402
from methods.bnas.search import derive_genotype, diversity_weight, mean_entropy  # noqa: E402
from methods.bnas.search_cell import MixedOp  # noqa: E402
from methods.bnas.supernet import SuperNet  # noqa: E402
from methods.registry import create_searcher, list_searchers  # noqa: E402


def test_mixed_op_skips_zeroise_but_its_alpha_still_gets_a_gradient():
    torch.manual_seed(0)
    op = MixedOp(4, 1).double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    alpha = torch.randn(7, dtype=torch.float64, requires_grad=True)
    w = torch.softmax(alpha, -1)
    fast = op(x, w)
    ref = w[0] * (x * 0) + sum(w[k] * m(x) for m, k in zip(op.ops, op.op_index, strict=True))
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
    g_fast = torch.autograd.grad(fast.sum(), alpha, retain_graph=True)[0]
    g_ref = torch.autograd.grad(ref.sum(), alpha)[0]
    torch.testing.assert_close(g_fast, g_ref)
    assert g_fast[0] != 0  # Zeroise's alpha moves through the softmax normalisation
    assert len(op.ops) == 6


def test_entropy_regulariser_and_its_official_bug():
    a = torch.zeros(14, 7)
    assert float(mean_entropy(a, a)) == pytest.approx(math.log(7))
    r = torch.zeros(14, 7)
    r[-1] = torch.tensor([5.0, 0, 0, 0, 0, 0, 0])  # the last reduce edge is peaked
    correct = float(mean_entropy(a, r))
    official = float(mean_entropy(a, r, official_bug=True))
    p = torch.softmax(r[-1], -1)
    h_last = float(-(p * p.log()).sum())
    assert correct == pytest.approx((14 * math.log(7) + 13 * math.log(7) + h_last) / 28)
    assert official == pytest.approx((14 * math.log(7) + 14 * h_last) / 28)
    assert [round(diversity_weight(e), 3) for e in (0, 10, 20, 49)] == [1.0, 0.273, 0.074, 0.002]
    assert diversity_weight(5, lam=0.0) == 0.0  # "No Div"


def _alphas(spec: dict[tuple[int, int], int], strength: float = 5.0) -> torch.Tensor:
    """14 x 7 alphas; spec maps (node, input) -> the op index that dominates that edge."""
    a = torch.zeros(14, 7)
    start = 0
    for i in range(4):
        for j in range(2 + i):
            if (i, j) in spec:
                a[start + j, spec[(i, j)]] = strength
        start += 2 + i
    return a


def test_derivation_keeps_zeroise_and_ranks_by_the_largest_weight():
    # node 0: edges from inputs 0 (bin_conv_3x3) and 1 (none) dominate; node 1: input 2 (none, strongest), input 0
    spec = {(0, 0): 5, (0, 1): 0, (1, 2): 0, (1, 0): 1, (2, 3): 3, (2, 1): 6, (3, 4): 2, (3, 0): 4}
    a = _alphas(spec)
    a[4, 0] = 6.0  # node 1 <- input 2 (edge 2 + 2 = 4, Zeroise) is the strongest edge of node 1
    g = derive_genotype(a, a, PRIMITIVES)
    assert g.normal[:2] == (("bin_conv_3x3", 0), ("none", 1)) or g.normal[:2] == (("none", 1), ("bin_conv_3x3", 0))
    assert g.normal[2] == ("none", 2)
    g.validate()
    # "No Zeroise": none is never chosen, and ranking ignores it
    gz = derive_genotype(a, a, PRIMITIVES, exclude_zeroise=True)
    assert all(op != "none" for op, _ in gz.normal + gz.reduce)


def test_gamma_transfer_divides_the_zeroise_column_not_row_zero():
    a = _alphas({(i, j): 0 for i in range(4) for j in range(2 + i)}, strength=1.0)  # Zeroise leads everywhere
    plain = derive_genotype(a, a, PRIMITIVES)
    assert all(op == "none" for op, _ in plain.normal)
    fixed = derive_genotype(a, a, PRIMITIVES, gamma=3.0)
    assert all(op != "none" for op, _ in fixed.normal)  # down-weighted by 3, Zeroise loses every edge
    buggy = derive_genotype(a, a, PRIMITIVES, gamma=3.0, official_gamma_bug=True)
    assert sum(op == "none" for op, _ in buggy.normal) >= 6  # the release only touches edge 0


def test_a_few_search_iterations_on_real_cifar(cifar_cache):
    """Real CIFAR-10 images of both search halves: the training loss falls, the alphas and weights move."""
    from harness.cifar10 import CifarLoader, load_cifar10

    ds = load_cifar10(cifar_cache)
    tr = ds.search_train_idx[:32]
    va = ds.search_val_idx[:32]
    train = next(iter(CifarLoader(ds.train_x[tr], ds.train_y[tr], 32, train=False)))
    val = next(iter(CifarLoader(ds.train_x[va], ds.train_y[va], 32, train=False)))
    torch.manual_seed(0)
    net = SuperNet(init_channels=8, layers=5)
    assert "bnas" in list_searchers()
    s = create_searcher("bnas", supernet=net, **{**searcher_hyperparameters(SearchConfig()), "epochs": 2})
    s.new_epoch(0)
    a0 = [a.detach().clone() for a in net.arch_parameters()]
    w0 = net.classifier.weight.detach().clone()
    outs = [s.step(train, val) for _ in range(6)]
    assert all(math.isfinite(v) for out in outs for v in out.values())
    losses = [o["train/loss"] for o in outs]
    assert losses[-1] < losses[0] - 0.1, losses
    assert all(not torch.equal(a, b) for a, b in zip(a0, net.arch_parameters(), strict=True))
    assert not torch.equal(w0, net.classifier.weight)
    out = outs[-1]
    assert out["search/objective"] == pytest.approx(out["search/arch_loss"] - s.entropy(), abs=1e-3)
    s.genotype().validate()
    s.new_epoch(1)  # cosine from 0.025 towards 0.001 over 2 epochs: halfway
    assert s.w_opt.param_groups[0]["lr"] == pytest.approx(0.013)


def test_release_switches_fp_tail_and_binary_res_weights():
    from methods.binary import BinaryConv2d

    a = timm.create_model("bnas_a", official_fp_tail=True)
    fp = [n for n, m in a.named_modules() if isinstance(m, BinaryConv2d) and m.binary_input and not m.binary_weight]
    assert fp == ["cells.19.ops.1.conv", "cells.19.ops.2.conv"]  # the last cell's bin_dil_conv_3x3 and bin_conv_3x3
    assert not [
        n
        for n, m in timm.create_model("bnas_a").named_modules()
        if isinstance(m, BinaryConv2d) and m.binary_input and not m.binary_weight
    ]
    r = timm.create_model("bnas_a", official_binary_res_weights=True)
    assert sum(p.numel() for p in r.parameters()) == 5_578_252
    res = r.cells[6].preprocess_res[1]
    assert isinstance(res, BinaryConv2d) and res.binary_weight and not res.binary_input


def test_release_lr_offset_uses_the_next_epochs_cosine_value():
    net = SuperNet(init_channels=4, layers=3)
    ours, release = bnas_searcher(net, epochs=50), bnas_searcher(net, epochs=50, official_lr_offset=True)
    ours.new_epoch(0)
    release.new_epoch(0)
    assert ours.w_opt.param_groups[0]["lr"] == pytest.approx(0.025)
    assert release.w_opt.param_groups[0]["lr"] == pytest.approx(0.001 + 0.024 * (1 + math.cos(math.pi / 50)) / 2)
    ours.new_epoch(1)
    assert ours.w_opt.param_groups[0]["lr"] == release.w_opt.param_groups[0]["lr"]


def test_drop_path_ramps_linearly_and_acts_per_sample_on_op_outputs():
    from harness.engine import DropPathSchedule

    m = timm.create_model("bnas_a", layers=5, init_channels=8)
    sched = DropPathSchedule(0.2)  # docs/bnas.md §5.3: 0.2 * epoch / epochs
    for epoch, p in ((0, 0.0), (300, 0.1), (599, 0.2 * 599 / 600)):
        sched.on_epoch_start(m, epoch, 600)
        assert m.drop_path_prob == pytest.approx(p)
    x = torch.randn(8, 3, 32, 32)
    m.train()
    m.drop_path_prob = 0.0
    torch.manual_seed(0)
    base = m(x)
    m.drop_path_prob = 0.5
    torch.manual_seed(0)
    dropped = m(x)
    changed = (dropped - base).abs().amax(dim=1) > 1e-6
    assert 0 < int(changed.sum()) <= 8  # masks are drawn per sample
    m.eval()
    with torch.no_grad():  # no drop-path at evaluation (XNOR re-centring in place leaves ~1e-7 float residue)
        torch.testing.assert_close(m(x), m(x), rtol=1e-5, atol=1e-6)
