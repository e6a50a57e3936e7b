"""Quantizers, BinaryConv2d and learned scales: forward values, gradient estimators, equivalences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from methods.binary import (
    ApproxSign,
    BinaryConv2d,
    BinaryWeightStats,
    LearnedScale,
    MagnitudeAwareSign,
    SteSign,
    XnorWeight,
    get_quantizer,
    list_quantizers,
)


def test_every_alias_resolves_and_unknown_raises():
    assert set(list_quantizers()) >= {"ste_sign", "approx_sign", "xnor_weight", "magnitude_aware_sign"}
    for name in list_quantizers():
        q = get_quantizer(name)
        assert isinstance(q, nn.Module) and q.name == name and q.bit_width == 1
    assert get_quantizer(None) is None
    with pytest.raises(ValueError, match="unknown quantizer 'sgn'"):
        get_quantizer("sgn")
    with pytest.raises(ValueError):
        get_quantizer(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("q", [SteSign(), ApproxSign()])
def test_sign_of_zero_is_plus_one_and_outputs_are_pm1(q):
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0, -0.0])
    assert q(x).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
    assert torch.sign(torch.tensor(0.0)) == 0  # why we do not use torch.sign


def test_ste_gradient_is_masked_outside_the_clip_range():
    x = torch.tensor([-1.5, -1.0, -0.3, 0.0, 0.7, 1.0, 1.2], requires_grad=True)
    SteSign()(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_approx_sign_gradient_is_the_bireal_polynomial():
    x = torch.tensor([-1.5, -0.5, 0.0, 0.25, 0.999, 1.0], requires_grad=True)
    ApproxSign()(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 1.0, 2.0, 1.5, 0.002, 0.0]), atol=1e-6, rtol=0)


def _w() -> torch.Tensor:
    return torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.5


def test_xnor_weight_forward_and_exact_gradient_match_autograd():
    w = _w().requires_grad_()
    q = XnorWeight(center=False, clamp=False, grad="exact")
    out = q(w)
    alpha = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(out, alpha * torch.where(w >= 0, 1.0, -1.0).double())
    assert out[0].unique().numel() == 2  # +-alpha per filter
    g = torch.randn_like(w)
    (out * g).sum().backward()
    # reference: autograd through alpha * s with an identity STE on sign
    w2 = w.detach().clone().requires_grad_()
    s = torch.where(w2 >= 0, 1.0, -1.0).double()
    ste = s + (w2 - w2.detach())  # value s, gradient identity
    ((w2.abs().mean(dim=(1, 2, 3), keepdim=True) * ste) * g).sum().backward()
    torch.testing.assert_close(w.grad, w2.grad)


def test_xnor_rescale_multiplies_by_n_times_one_minus_one_over_cin():
    w = _w()
    g = torch.randn_like(w)
    grads = {}
    for mode in ("exact", "xnor_rescale"):
        p = w.clone().requires_grad_()
        (XnorWeight(center=False, clamp=False, grad=mode)(p) * g).sum().backward()
        grads[mode] = p.grad
    n, c_in = 3 * 3 * 3, 3
    torch.testing.assert_close(grads["xnor_rescale"], grads["exact"] * n * (1 - 1 / c_in))


def test_xnor_ste_mode_and_in_place_centring_and_clamping():
    w = (_w() * 4).requires_grad_()
    q = XnorWeight(center=True, clamp=True, grad="ste")
    q(w)
    assert w.detach().abs().max() <= 1.0  # the latent weights were clamped in place
    w2 = _w() * 4
    centred = (w2 - w2.mean(dim=1, keepdim=True)).clamp(-1, 1)
    torch.testing.assert_close(w.detach(), centred)
    w.grad = None
    out = q(w)
    out.sum().backward()
    assert torch.equal(w.grad, (w.detach().abs() <= 1).double())


def _prep(w: torch.Tensor) -> torch.Tensor:
    """The release's `binarization()` prep by hand: centre over C_in, then clamp to [-1, 1]."""
    return (w - w.mean(dim=1, keepdim=True)).clamp(-1.0, 1.0)


def _clamping_weights(scale: float = 4.0) -> torch.Tensor:
    """Latent weights where the clamp fires, so that a second prep is not a no-op."""
    w = _w() * scale
    once = _prep(w)
    assert (_prep(once) - once).abs().max() > 1e-2  # centring the clamped weights again moves them
    return w


def test_xnor_prep_runs_once_while_the_weights_do_not_change():
    """Two forwards without a weight change (the search's arch and weight steps) centre and clamp once: the second
    leaves the latent weights, and the binary weights, exactly as after the first (the old per-forward prep moved
    them again)."""
    p = nn.Parameter(_clamping_weights())
    w0 = p.detach().clone()
    q = XnorWeight(center=True, clamp=True, grad="xnor_rescale")
    out1 = q(p)
    assert torch.equal(p.detach(), _prep(w0))
    assert not q.prep_due(p)
    out2 = q(p)
    assert torch.equal(p.detach(), _prep(w0)) and torch.equal(out2, out1)
    # and an arch-only gradient (alphas, not these weights) does not make it due either
    a = torch.ones((), dtype=p.dtype, requires_grad=True)
    torch.autograd.grad((q(p) * a).sum(), a)
    assert not q.prep_due(p) and torch.equal(p.detach(), _prep(w0))


@pytest.mark.parametrize("opt", ["sgd", "sgd_foreach", "sgd_fused", "adam_foreach", "adam_fused"])
def test_xnor_prep_runs_again_after_an_optimizer_step(opt):
    """After a backward and a step the next forward preps the updated weights (fused steps do not bump `_version`:
    the backward through the quantizer makes the prep due)."""
    p = nn.Parameter(_clamping_weights())
    q = XnorWeight(center=True, clamp=True, grad="xnor_rescale")
    kind, _, impl = opt.partition("_")
    kw = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    o = torch.optim.SGD([p], lr=0.01, momentum=0.9, **kw) if kind == "sgd" else torch.optim.Adam([p], lr=0.01, **kw)
    g = torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        (q(p) * g).sum().backward()
        o.step()
        o.zero_grad()
        stepped = p.detach().clone()
        assert q.prep_due(p)
        q(p)
        assert torch.equal(p.detach(), _prep(stepped))


def test_xnor_prep_after_in_place_writes_mode_changes_and_schedule():
    conv = BinaryConv2d(3, 4, 3, weight_quantizer=XnorWeight(grad="xnor_rescale")).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    state = {"weight": _clamping_weights()}
    conv.load_state_dict(state)  # an in-place copy: bumps the version
    conv(x)
    once = _prep(state["weight"])
    assert torch.equal(conv.weight.detach(), once)
    conv(x)
    assert torch.equal(conv.weight.detach(), once)
    conv.load_state_dict({"weight": 1.5 * state["weight"]})
    conv(x)
    assert torch.equal(conv.weight.detach(), _prep(1.5 * state["weight"]))
    # the release preps at the start of an evaluation pass and again at the next training iteration
    w = conv.weight.detach().clone()
    conv.eval()
    conv(x)
    conv(x)
    assert torch.equal(conv.weight.detach(), _prep(w))
    conv.train()
    conv(x)
    assert torch.equal(conv.weight.detach(), _prep(_prep(w)))
    conv.weight_quantizer.schedule_prep()
    conv(x)
    assert torch.equal(conv.weight.detach(), _prep(_prep(_prep(w))))


def test_xnor_prep_once_with_full_precision_rows():
    p = nn.Parameter(_clamping_weights())
    w0 = p.detach().clone()
    q = XnorWeight(center=True, clamp=True, grad="xnor_rescale")
    q.binary_rows = torch.tensor([True, False, True, True])
    q(p)
    q(p)
    rows = q.binary_rows.view(-1, 1, 1, 1)
    assert torch.equal(p.detach(), torch.where(rows, _prep(w0), w0))


def test_xnor_raw_grad_inverts_the_rescale():
    """raw_grad recovers dL/dW_b from the "xnor_rescale" gradient (the release clips that one), including
    full-precision rows and an all-zero filter (alpha = 0: the minimum-norm preimage G / c)."""
    w = _w()
    w[2] = 0.0
    q = XnorWeight(center=False, clamp=False, grad="xnor_rescale")
    q.binary_rows = torch.tensor([True, True, True, False])
    g = torch.randn(w.shape, dtype=w.dtype, generator=torch.Generator().manual_seed(3))
    p = w.clone().requires_grad_()
    (q(p) * g).sum().backward()
    raw = q.raw_grad(w, p.grad)
    c = 27 * (1 - 1 / 3)
    torch.testing.assert_close(raw[[0, 1, 3]], g[[0, 1, 3]], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(raw[2], g[2].mean() * torch.ones_like(g[2]), rtol=1e-12, atol=1e-14)  # s = +1
    torch.testing.assert_close(p.grad[2], c * g[2].mean() * torch.ones_like(g[2]), rtol=1e-12, atol=1e-14)
    assert XnorWeight(grad="exact").raw_grad(w, p.grad) is p.grad


@pytest.mark.parametrize("variant", ["release", "paper"])
def test_magnitude_aware_sign(variant):
    w = (_w() * 3).requires_grad_()
    out = MagnitudeAwareSign(variant)(w)
    alpha = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(out, alpha * torch.where(w >= 0, 1.0, -1.0).double())
    out.sum().backward()
    mask = (w.detach().abs() < 1).double()
    torch.testing.assert_close(w.grad, mask * (alpha if variant == "paper" else 1.0))


def test_binary_conv_without_quantizers_equals_conv2d():
    torch.manual_seed(0)
    ref = nn.Conv2d(3, 8, 3, stride=2, padding=1, dilation=1, bias=True)
    b = BinaryConv2d(3, 8, 3, stride=2, padding=1, bias=True)
    b.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    assert torch.equal(b(x), ref(x))
    assert isinstance(b, nn.Conv2d)


def test_binary_conv_equals_conv2d_on_signs_and_padding_conventions():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6)
    for pad_value in (0.0, 1.0):
        b = BinaryConv2d(
            4, 5, 3, padding=1, input_quantizer="ste_sign", weight_quantizer="ste_sign", pad_value=pad_value
        )
        xs, ws = torch.where(x >= 0, 1.0, -1.0), torch.where(b.weight >= 0, 1.0, -1.0)
        ref = F.conv2d(F.pad(xs, (1, 1, 1, 1), value=pad_value), ws)
        assert torch.equal(b(x), ref)
    # 0-padding makes the border a third value (products of 0); +1-padding keeps every product at +-1
    b = BinaryConv2d(4, 5, 3, padding=1, input_quantizer="ste_sign", weight_quantizer="ste_sign", pad_value=0.0)
    b1 = BinaryConv2d(4, 5, 3, padding=1, input_quantizer="ste_sign", weight_quantizer="ste_sign", pad_value=1.0)
    b1.load_state_dict(b.state_dict())
    y0, y1 = b(x), b1(x)
    assert torch.equal(y0[..., 1:-1, 1:-1], y1[..., 1:-1, 1:-1]) and not torch.equal(y0, y1)
    with pytest.raises(ValueError):
        BinaryConv2d(4, 5, 3, pad_value=-1.0)


def test_learned_scale_shapes():
    y = torch.randn(2, 6, 5, 4)
    assert LearnedScale(6, "channel").alpha.shape == (1, 6, 1, 1)
    f = LearnedScale(6, "factorised", (5, 4))
    assert sum(p.numel() for p in f.parameters()) == 6 + 5 + 4
    torch.testing.assert_close(f(y), y)  # initialised to ones
    full = LearnedScale(6, "full", (5, 4))
    assert full.alpha.shape == (1, 6, 5, 4)
    with pytest.raises(ValueError, match="built for"):
        f(torch.randn(1, 6, 3, 3))
    with pytest.raises(ValueError):
        LearnedScale(6, "factorised")


def test_flip_ratio_and_saturation():
    m = nn.Sequential(BinaryConv2d(2, 2, 1, input_quantizer="ste_sign", weight_quantizer="ste_sign"))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([0.5, -0.5, 1.5, -0.2]).view(2, 2, 1, 1))
    stats = BinaryWeightStats(m)
    stats.snapshot()
    with torch.no_grad():
        m[0].weight.mul_(torch.tensor([-1.0, 1.0, 1.0, 1.0]).view(2, 2, 1, 1))  # one of four signs flips
    stats.update()
    s = stats.summary(per_layer=True)
    assert s["binary/flip_ratio"] == pytest.approx(0.25) and s["binary/saturation"] == pytest.approx(0.25)
    assert s["binary/flip_ratio/0"] == pytest.approx(0.25)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fast_sign_and_ste_mask_equal_their_straightforward_forms(dtype):
    """binary_sign (one copysign) and ste_mask_grad (hardtanh's fused backward, bounds one ulp out) are the plain
    where/abs/compare forms bit for bit, at the edge cases too: +-0 (sign +1), |x| = clip exactly (gradient passes),
    one ulp either side of the clip."""
    from methods.binary.quantizers import binary_sign, ste_bounds, ste_mask_grad

    g = torch.Generator().manual_seed(0)
    x = (1.5 * torch.randn(50_000, dtype=torch.float64, generator=g)).to(dtype)
    one = torch.tensor(1.0, dtype=dtype)
    ulps = [torch.nextafter(one, torch.tensor(v, dtype=dtype)) for v in (2.0, 0.0)]
    edge = torch.tensor([0.0, -0.0, 1.0, -1.0, 2.0, -2.0], dtype=dtype)
    x = torch.cat([x, edge, *[u.view(1) for u in ulps], *[-u.view(1) for u in ulps]])
    grad = torch.randn(len(x), dtype=torch.float64, generator=g).to(dtype)
    assert torch.equal(binary_sign(x), torch.where(x >= 0, 1.0, -1.0).to(dtype))
    assert binary_sign(torch.tensor([-0.0], dtype=dtype)).item() == 1.0
    for clip in (1.0, 0.5, 1.3):
        got = ste_mask_grad(grad, x, ste_bounds(clip)[dtype])
        assert torch.equal(got, grad * (x.abs() <= clip).to(dtype)), clip
