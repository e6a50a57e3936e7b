"""The work-sharing search supernet against the per-op reference (docs/internals.md: float64, power-of-two scale).

With the XNOR scale rounded to a power of two every binary sum is exact in float64, so the two implementations may
only differ by the rounding of the (reordered) weighted sums: outputs, losses and gradients agree to ~1e-12, and a
disagreement of the math (a wrong weight slice, a wrong BN, a missing op) shows up at order 1.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import bnas_searcher, copy_from_reference, pow2_xnor_alpha

from methods.binary import BinaryConv2d, quantizers
from methods.bnas import supernet_shared
from methods.bnas.operations import CONV_OPS
from methods.bnas.supernet import SuperNet, release_fp_tail
from methods.bnas.supernet_shared import SharedSearchCell, StateOps


@pytest.fixture(autouse=True)
def _exact_xnor_scales(monkeypatch):
    """Every XNOR scale of this module's tests is a power of two: binary sums exact in float64 (module docstring)."""
    monkeypatch.setattr(quantizers, "_xnor_alpha", pow2_xnor_alpha)


def _force_op_path(monkeypatch, fused: bool) -> None:
    """fused=False: the op-by-op path that CUDA, autocast and torch.compile take, on CPU."""
    if not fused:
        monkeypatch.setattr(supernet_shared, "fused_node_applies", lambda h: False)


SWITCHES = {
    "paper": {},
    "exclude_zeroise": {"exclude_zeroise": True},
    "no_skip": {"skip": False},
    "release_bugs": {"official_fp_tail": True, "official_binary_preprocess": True},
}


def _pair(**kwargs: bool) -> tuple[SuperNet, SuperNet]:
    torch.manual_seed(0)
    ref = SuperNet(init_channels=4, layers=5, impl="reference", **kwargs).double()
    shared = SuperNet(init_channels=4, layers=5, impl="shared", **kwargs).double()
    copy_from_reference(shared, ref)
    with torch.no_grad():  # alphas away from uniform so that every op's weight differs
        for a in (*ref.arch_parameters(), *shared.arch_parameters()):
            a.copy_(torch.linspace(-1, 1, a.numel(), dtype=a.dtype).view_as(a).sin())
    return ref, shared


def _mapped_grads(
    ref: SuperNet, shared: SuperNet, g_ref: dict, g_shared: dict
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, reference grad, shared grad) for every reference parameter, edge conv weights sliced out of the groups."""
    pairs = []
    for name, g in g_ref.items():
        if ".edges." not in name:
            pairs.append((name, g, g_shared[name]))
    for ci, (rc, sc) in enumerate(zip(ref.cells, shared.cells, strict=True)):
        assert isinstance(sc, SharedSearchCell)
        for h, ops in enumerate(sc.state_ops):
            for op in ops.convs:
                gs = g_shared[f"cells.{ci}.state_ops.{h}.convs.{op}.weight"]
                for k, e in enumerate(sc.edge_ids[h]):
                    gr = g_ref[_param_name(ref, rc.edges[e].conv(op).weight)]
                    pairs.append((f"cells.{ci}.edges.{e}.{op}", gr, gs[k * sc.c : (k + 1) * sc.c]))
    return pairs


def _param_name(net: SuperNet, p: torch.Tensor) -> str:
    return next(n for n, q in net.named_parameters() if q is p)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "per_op_mixing"])
@pytest.mark.parametrize("switches", SWITCHES.values(), ids=SWITCHES.keys())
def test_shared_supernet_equals_the_per_op_reference(switches, fused, monkeypatch):
    _force_op_path(monkeypatch, fused)
    ref, shared = _pair(**switches)
    x = torch.randn(6, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.arange(6) % 10
    losses, grads = [], []
    for net in (ref, shared):
        net.train()
        loss = F.cross_entropy(net(x), y)
        names = [n for n, _ in net.named_parameters()]
        g = torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)
        losses.append(loss)
        grads.append({n: gi for n, gi in zip(names, g, strict=True) if gi is not None})
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-12, atol=0)
    pairs = _mapped_grads(ref, shared, *grads)
    assert len(pairs) == len(grads[0])  # every reference gradient has its counterpart
    for name, gr, gs in pairs:
        torch.testing.assert_close(gs, gr, rtol=1e-9, atol=1e-12, msg=name)
    # the alphas of Zeroise get their gradient through the softmax though Zeroise is never computed
    if not switches.get("exclude_zeroise"):
        assert float(grads[1]["alphas_normal"][:, 0].abs().sum()) > 0
    # eval mode uses the running statistics: the shared BNs must hold the same ones as the per-op BNs
    with torch.no_grad():
        torch.testing.assert_close(shared.eval()(x), ref.eval()(x), rtol=1e-9, atol=1e-12)


def test_search_steps_of_both_implementations_agree():
    """Two full BNAS iterations (XNOR centring/clamping, gradient rescale, Adam on alphas, SGD on weights)."""
    ref, shared = _pair()
    g = torch.Generator().manual_seed(2)
    batches = [
        (torch.randn(4, 3, 16, 16, dtype=torch.float64, generator=g), torch.randint(0, 10, (4,), generator=g))
        for _ in range(4)
    ]
    out = []
    for net in (ref, shared):
        s = bnas_searcher(net, epochs=2)
        s.new_epoch(0)
        out.append([s.step(batches[2 * i], batches[2 * i + 1]) for i in range(2)])
    for a, b in zip(out[0], out[1], strict=True):
        assert a == pytest.approx(b, rel=1e-9)
    for a, b in zip(ref.arch_parameters(), shared.arch_parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    for ci, (rc, sc) in enumerate(zip(ref.cells, shared.cells, strict=True)):
        for e in range(14):
            for op in CONV_OPS:
                torch.testing.assert_close(
                    sc.edge_weight(e, op), rc.edges[e].conv(op).weight, rtol=1e-9, atol=1e-12, msg=f"{ci}.{e}.{op}"
                )


@pytest.mark.parametrize("impl", ["shared", "reference"])
def test_a_search_iteration_centres_and_clamps_the_latent_weights_once(impl):
    """The release centres and clamps once per iteration, before the architecture step, not again before the weight
    step (the arch step leaves the weights as they are; a second centring of clamped weights would move them). With
    lr = 0 the weight step changes nothing either, so after k iterations the weights are exactly k preps of the
    start."""
    torch.manual_seed(0)
    net = SuperNet(init_channels=4, layers=5, impl=impl).double()
    convs = [m for m in net.modules() if isinstance(m, BinaryConv2d) and m.weight_quantizer is not None]
    with torch.no_grad():
        for c in convs:
            c.weight.mul_(20.0)  # the clamp fires
    w0 = [c.weight.detach().clone() for c in convs]

    def prep(w: torch.Tensor) -> torch.Tensor:
        return (w - w.mean(dim=1, keepdim=True)).clamp(-1.0, 1.0)

    assert all(not torch.equal(prep(prep(w)), prep(w)) for w in w0)
    s = bnas_searcher(net, epochs=1, lr=0.0, lr_min=0.0)
    g = torch.Generator().manual_seed(5)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(4, 3, 16, 16, dtype=torch.float64, generator=g), torch.arange(4)

    s.step(batch(), batch())
    for c, w in zip(convs, w0, strict=True):
        assert torch.equal(c.weight.detach(), prep(w))
    s.step(batch(), batch())
    for c, w in zip(convs, w0, strict=True):
        assert torch.equal(c.weight.detach(), prep(prep(w)))
    # an evaluation pass after the iteration (as `bnas search` runs it) preps once, at its first batch
    net.eval()
    with torch.no_grad():
        for _ in range(3):
            s.forward(batch()[0])
    for c, w in zip(convs, w0, strict=True):
        assert torch.equal(c.weight.detach(), prep(prep(prep(w))))


def test_release_fp_tail_of_the_search_net_is_the_last_18_convs():
    net = SuperNet(impl="reference", official_fp_tail=True)
    fp = release_fp_tail(net)
    assert len(fp) == 18 and {c for c, _, _ in fp} == {7}  # 16 preprocess + 2 res convs -> the last 18
    assert {(e, op) for _, e, op in fp if e == 9} == {(9, "bin_conv_3x3"), (9, "bin_conv_5x5")}
    assert {e for _, e, _ in fp} == {9, 10, 11, 12, 13}  # the edges into node 3 of the last cell
    weight_fp = [m for m in net.cells[7].modules() if getattr(m, "binary_input", False) and not m.binary_weight]
    assert len(weight_fp) == 18  # their inputs stay binary
    assert not SuperNet(impl="reference").__dict__.get("fp_convs")


def test_binary_preprocess_switch_binarises_preprocess_and_res_weights_only():
    net = SuperNet(init_channels=4, layers=5, official_binary_preprocess=True)
    for cell in net.cells:
        for pre in (cell.preprocess0, cell.preprocess1):
            assert pre.conv.binary_weight and not pre.conv.binary_input
        if cell.preprocess_res is not None:
            assert cell.preprocess_res[1].binary_weight and not cell.preprocess_res[1].binary_input
    assert not any(c.preprocess0.conv.binary_weight for c in SuperNet(init_channels=4, layers=5).cells)


def test_shared_cell_runs_one_bn_and_one_conv_per_state_and_kernel():
    net = SuperNet(init_channels=4, layers=5)
    cell = net.cells[0]
    assert len(cell.state_ops) == 5 and [len(ids) for ids in cell.edge_ids] == [4, 4, 3, 2, 1]
    assert sum(len(s.convs) for s in cell.state_ops) == 20
    bns = [m for m in cell.state_ops.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 15  # BN before sign, after max pool and after avg pool, once per state


def test_activation_checkpointing_gives_the_same_gradients_and_bn_statistics():
    """search.activation_checkpointing recomputes each cell in backward: same loss, gradients and running
    statistics (updated once per forward, not again by the recomputation)."""
    ref, _ = _pair()
    torch.manual_seed(0)
    ck = SuperNet(init_channels=4, layers=5, impl="reference", activation_checkpointing=True).double()
    ck.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.arange(6) % 10
    out = []
    for net in (ref, ck):
        net.train()
        loss = F.cross_entropy(net(x), y)
        out.append((loss, torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-12, atol=0)
    for (name, _), ga, gb in zip(ref.named_parameters(), out[0][1], out[1][1], strict=True):
        assert (ga is None) == (gb is None), name
        if ga is not None:
            torch.testing.assert_close(gb, ga, rtol=1e-9, atol=1e-12, msg=name)
    sa, sb = ref.state_dict(), ck.state_dict()
    for k in sa:  # running means/vars and num_batches_tracked as after one plain forward
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-12, atol=0, msg=k)
    assert int(sb["cells.0.preprocess0.bn.num_batches_tracked"]) == 1


@pytest.mark.parametrize("stride", [1, 2])
def test_channels_last_pools_equal_nchw_pools_including_ties(stride):
    """The shared cell runs its pools channels_last on CPU (4-6x faster there). Integer-valued inputs are full of ties:
    outputs and the gradient's route through a max-pool tie must be the same as in NCHW, bit for bit."""
    x = torch.randint(0, 3, (8, 5, 12, 12), generator=torch.Generator().manual_seed(0)).double()
    g = torch.randn(8, 5, (12 + stride - 1) // stride, (12 + stride - 1) // stride, dtype=torch.float64)
    for pool in (torch.nn.MaxPool2d(3, stride, 1), torch.nn.AvgPool2d(3, stride, 1, count_include_pad=False)):
        a = x.clone().requires_grad_(True)
        b = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        ya, yb = pool(a), pool(b).contiguous()
        assert torch.equal(ya, yb)
        (ga,) = torch.autograd.grad(ya, a, g)
        (gb,) = torch.autograd.grad(yb, b, g)
        assert torch.equal(ga, gb), pool


def test_activation_checkpointing_with_the_fused_shared_cell():
    """The CPU shared cell's fused node (_MixedConvs) under non-reentrant checkpointing: the same gradients."""
    torch.manual_seed(0)
    plain = SuperNet(init_channels=4, layers=5, impl="shared").double()
    ck = SuperNet(init_channels=4, layers=5, impl="shared", activation_checkpointing=True).double()
    ck.load_state_dict(plain.state_dict())
    x = torch.randn(6, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    grads = []
    for net in (plain, ck):
        loss = F.cross_entropy(net.train()(x), torch.arange(6) % 10)
        grads.append(torch.autograd.grad(loss, list(net.parameters()), allow_unused=True))
    for a, b in zip(*grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)


def test_fused_state_node_keeps_few_conv_outputs_and_its_gradients_are_exact(monkeypatch):
    """The CPU fused node (int8, float32) keeps only what each step needs: in the architecture step (alphas require
    grad) the 5x5 kernels' outputs, the 3x3 ones being recomputed in backward; in the weight step 1-byte ReLU masks.
    Recomputing or masking changes no bit of the gradients (against keeping every output), and the node agrees with
    the op-by-op path on the same state (same signs, exact int8 outputs with a power-of-two scale: only the float32
    summation order differs)."""
    from methods.binary.int8_conv import int8_conv_enabled
    from methods.bnas.genotypes import PRIMITIVES

    if not int8_conv_enabled():
        pytest.skip("no oneDNN int8 conv")
    torch.manual_seed(0)
    ops = StateOps(8, 1, 3, PRIMITIVES).train()
    gen = torch.Generator().manual_seed(4)
    h = torch.randn(4, 8, 12, 12, generator=gen).contiguous(memory_format=torch.channels_last)
    alphas = torch.randn(3, len(PRIMITIVES), generator=gen).softmax(-1)
    g_out = [torch.randn(4, 8, 12, 12, generator=gen) for _ in range(3)]
    weights = [c.weight for c in ops.convs.values()]
    res = {}
    runs = {  # name: (fused, alphas require grad, recompute_taps)
        "arch": (True, True, 9),
        "arch_keep_all": (True, True, 0),
        "weights": (True, False, 9),
        "op_path": (False, True, 9),
    }
    for name, (fused, arch, taps) in runs.items():
        monkeypatch.setattr(supernet_shared, "fused_node_applies", lambda h, fused=fused: fused)
        monkeypatch.setattr(supernet_shared, "RECOMPUTE_TAPS", taps)
        a = alphas.clone().requires_grad_(arch)
        saved: list[torch.Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, s=saved: s.append(t) or t, lambda t: t):
            outs = ops(h, a)
        loss = sum((o * g).sum() for o, g in zip(outs, g_out, strict=True))
        grads = torch.autograd.grad(loss, ([a] if arch else []) + weights)
        kept = [t for t in saved if t.dim() == 4 and t.shape[1] == 3 * 8]  # (N, edges * C, H, W): conv outputs
        res[name] = (outs[0].grad_fn.name(), grads, [t.dtype for t in kept])
    assert res["arch"][0] == res["weights"][0] == "_MixedConvsBackward" != res["op_path"][0]
    assert res["arch"][2] == [torch.float32] * 2  # the 5x5 and dilated 5x5 outputs
    assert res["arch_keep_all"][2] == [torch.float32] * 4
    assert res["weights"][2] == [torch.bool] * 4
    for a, b in zip(res["arch"][1], res["arch_keep_all"][1], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(res["arch"][1][1:], res["weights"][1], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(res["arch"][1], res["op_path"][1], strict=True):
        assert float(a.abs().sum()) > 0
        assert float((a - b).norm() / b.norm()) < 1e-5  # float32 summation order (coefficients folded differently)


def _graph_run(cuda_graph: bool, amp: bool, checkpointing: bool, device: str) -> tuple[list, SuperNet]:
    """Eight iterations over two epochs from the same start: with `cuda_graph` 3 eager warm-up steps, capture and
    replay, an eager step with a smaller (an epoch's last) batch, a recapture at the second epoch and a replay."""
    torch.manual_seed(0)
    net = SuperNet(init_channels=4, layers=5, activation_checkpointing=checkpointing).to(device)
    s = bnas_searcher(net, epochs=2, amp_dtype=torch.bfloat16 if amp else None, cuda_graph=cuda_graph)
    g = torch.Generator().manual_seed(3)
    sizes = [8] * 10 + [8, 6] + [8] * 4
    out = []
    for i in range(0, len(sizes), 2):
        if i in (0, 12):
            s.new_epoch(i // 12)
        b = [
            (torch.randn(n, 3, 16, 16, generator=g).to(device), torch.randint(0, 10, (n,), generator=g).to(device))
            for n in sizes[i : i + 2]
        ]
        out.append(s.step(b[0], b[1]))
    return out, net


def test_cuda_graph_switch_is_inert_on_cpu():
    a, net_a = _graph_run(False, False, False, "cpu")
    b, net_b = _graph_run(True, False, False, "cpu")
    assert a == b
    for p, q in zip(net_a.parameters(), net_b.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp,checkpointing", [(False, False), (True, False), (False, True)])
def test_cuda_graph_replay_equals_the_eager_search(amp, checkpointing, monkeypatch):
    """The captured iteration (warm-up, capture, replay, recapture at new_epoch, an eager odd-sized batch in between)
    gives the eager search's metrics, alphas and weights bit for bit, with deterministic algorithms (without them
    the GPU's atomic reductions differ from run to run, eager or not, and the binary network amplifies that)."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        eager, net_e = _graph_run(False, amp, checkpointing, "cuda")
        graph, net_g = _graph_run(True, amp, checkpointing, "cuda")
    finally:
        torch.use_deterministic_algorithms(was)
    assert graph == eager
    for (n, p), q in zip(net_e.named_parameters(), net_g.parameters(), strict=True):
        assert torch.equal(p, q), n
