"""The exact int8 forward of binary convs (methods.binary.int8_conv) against the float paths.

Binary sums are integers times the per-filter scale: the int8 forward must give the correctly rounded float32 value
(float64 product rounded once), and with a power-of-two scale (exact in float32) the same bits as F.conv2d, the same
ReLU mask and therefore the same gradients (docs/internals.md, "CPU kernels").
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import pow2_xnor_alpha

import methods  # noqa: F401
from methods.binary import BinaryConv2d, XnorWeight, quantizers
from methods.binary.int8_conv import int8_binary_conv2d, int8_conv_available, int8_conv_enabled, set_int8_conv

pytestmark = pytest.mark.skipif(not int8_conv_available(), reason="no oneDNN int8 conv in this torch build/CPU")

# (C_in, C_out, kernel, stride, padding, dilation): the BNAS op geometries (1x1 preprocess, 3x3/5x5, dilated,
# stride 2) and a wide 1x1 input (the uint8 input is reordered to channels_last above 64 channels)
GEOMETRIES = [
    (16, 64, 5, 1, 2, 1),
    (16, 48, 3, 1, 2, 2),
    (32, 128, 5, 2, 4, 2),
    (36, 36, 3, 2, 1, 1),
    (144, 36, 1, 1, 0, 1),
]


def _binary(c_in: int, c_out: int, k: int, pow2: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, c_in, 11, 11, generator=g).sign()
    alpha = torch.rand(c_out, generator=g) + 0.05
    if pow2:
        alpha = torch.exp2(torch.round(torch.log2(alpha)))
    w = torch.randn(c_out, c_in, k, k, generator=g).sign() * alpha.view(-1, 1, 1, 1)
    return x, w


@pytest.mark.parametrize("geom", GEOMETRIES)
@pytest.mark.parametrize("relu", [False, True])
def test_forward_is_the_correctly_rounded_binary_sum(geom, relu):
    c_in, c_out, k, s, p, d = geom
    x, w = _binary(c_in, c_out, k, pow2=False, seed=c_in + k)
    y = int8_binary_conv2d(x, w, s, p, d, relu=relu)
    exact = F.conv2d(x.double(), w.double(), None, s, p, d)  # integers times alpha: exact in float64
    exact = exact.clamp_min(0) if relu else exact
    assert y.dtype == torch.float32 and y.shape == exact.shape
    assert torch.equal(y, exact.float())


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_power_of_two_scale_is_bit_equal_to_float32_conv_with_equal_gradients(geom):
    c_in, c_out, k, s, p, d = geom
    x, w = _binary(c_in, c_out, k, pow2=True, seed=7 * c_in + k)
    g = torch.randn(F.conv2d(x, w, None, s, p, d).shape, generator=torch.Generator().manual_seed(1))
    outs, grads = [], []
    for int8 in (True, False):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = int8_binary_conv2d(xi, wi, s, p, d, relu=True) if int8 else F.relu(F.conv2d(xi, wi, None, s, p, d))
        y.backward(g)
        outs.append(y.detach())
        grads.append((xi.grad, wi.grad))
    assert torch.equal(outs[0], outs[1])
    assert (outs[0] == 0).any() and (outs[0] > 0).any()  # the ReLU mask is exercised
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_gradient_for_the_input_alone_skips_the_weight_gradient():
    """torch.autograd.grad(..., inputs=[x]) (the BNAS architecture step) must not run the weight-gradient conv."""
    from torch.utils._python_dispatch import TorchDispatchMode

    masks: list[list[bool]] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.convolution_backward.default:
                masks.append(list(args[-1]))
            return func(*args, **(kwargs or {}))

    x, w = _binary(16, 32, 3, pow2=True, seed=3)
    xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
    with Record():
        (gx,) = torch.autograd.grad(int8_binary_conv2d(xi, wi, 1, 1, 1, relu=True).square().sum(), [xi])
        int8_binary_conv2d(xi, wi, 1, 1, 1, relu=True).square().sum().backward()
    (rx,) = torch.autograd.grad(F.relu(F.conv2d(xi, wi, None, 1, 1)).square().sum(), [xi])
    assert torch.equal(gx, rx)
    assert masks == [[True, False, False], [True, True, False]]


def test_binary_conv2d_uses_the_int8_forward_when_eligible_and_matches_the_float_path(monkeypatch):
    monkeypatch.setattr(quantizers, "_xnor_alpha", pow2_xnor_alpha)  # an exact scale: the int8 path is bit-equal
    torch.manual_seed(0)
    conv = BinaryConv2d(16, 32, 3, 1, 1, input_quantizer="ste_sign", weight_quantizer=XnorWeight(grad="exact"))
    x = torch.randn(4, 16, 9, 9)
    res = {}
    for flag in (True, False):
        set_int8_conv(flag)
        try:
            assert int8_conv_enabled() is flag
            xi = x.clone().requires_grad_()
            conv.weight.grad = None
            y = conv(xi, relu=True)
            y.square().sum().backward()
            res[flag] = (y.detach(), xi.grad, conv.weight.grad.clone(), y.grad_fn.name())
        finally:
            set_int8_conv(True)
    assert "Int8" in res[True][3] and "Int8" not in res[False][3]
    for a, b in zip(res[True][:3], res[False][:3], strict=True):
        assert torch.equal(a, b)


def test_ineligible_convs_keep_the_float_path():
    x = torch.randn(2, 8, 7, 7)
    partial = XnorWeight()
    partial.binary_rows = torch.tensor([True, False] * 4)  # some full-precision filters: not +-alpha per filter
    for conv in (
        BinaryConv2d(8, 8, 3, 1, 1, input_quantizer="ste_sign", weight_quantizer=partial),
        BinaryConv2d(8, 8, 3, 1, 1, input_quantizer="ste_sign", weight_quantizer="xnor_weight", pad_value=1.0),
        BinaryConv2d(8, 8, 3, 1, 1, weight_quantizer="xnor_weight"),  # real input
    ):
        assert "Int8" not in conv(x.requires_grad_()).grad_fn.name()
    conv = BinaryConv2d(8, 8, 3, 1, 1, input_quantizer="ste_sign", weight_quantizer="xnor_weight").double()
    assert "Int8" not in conv(x.double().requires_grad_()).grad_fn.name()  # float64: the float path


def test_bnas_a_forward_on_real_cifar_is_bit_equal_with_and_without_int8(cifar_cache, monkeypatch):
    import timm

    from harness.cifar10 import CifarLoader, load_cifar10

    ds = load_cifar10(cifar_cache)
    x, _ = next(iter(CifarLoader(ds.test_x[:16], ds.test_y[:16], 16, train=False)))
    torch.manual_seed(0)
    model = timm.create_model("bnas_a", layers=5, init_channels=8).eval()
    monkeypatch.setattr(quantizers, "_xnor_alpha", pow2_xnor_alpha)
    outs = []
    for flag in (True, False):
        set_int8_conv(flag)
        try:
            outs.append(model(x).detach())
        finally:
            set_int8_conv(True)
    assert torch.equal(outs[0], outs[1])


def test_cpu_autocast_takes_the_float_path():
    conv = BinaryConv2d(8, 8, 3, 1, 1, input_quantizer="ste_sign", weight_quantizer="xnor_weight")
    x = torch.randn(2, 8, 7, 7, requires_grad=True)
    assert "Int8" in conv(x).grad_fn.name()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    assert "Int8" not in y.grad_fn.name() and y.dtype == torch.bfloat16


@pytest.mark.parametrize("quantizer", ["ste_sign", "approx_sign"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_sign_fused_into_the_int8_conv_is_bit_equal_to_sign_then_conv(quantizer, channels_last, relu):
    """BinaryConv2d runs sign + int8 conv as one node (only uint8 codes kept); same values, gradients and layout
    as the input quantizer followed by the int8 conv, with real (not power-of-two) XNOR scales."""
    torch.manual_seed(3)
    conv = BinaryConv2d(36, 24, 3, 1, 2, 2, input_quantizer=quantizer, weight_quantizer="xnor_weight")
    x = torch.randn(4, 36, 10, 10) * 1.5
    x[0, 0, 0, :3] = torch.tensor([0.0, -0.0, 1.0])  # sign(+-0) = +1; |x| = 1 is inside the STE window
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(4, 24, 10, 10)
    res = []
    for fused in (True, False):
        xi = x.clone().requires_grad_()
        conv.weight.grad = None
        y = conv(xi, relu=relu) if fused else conv._conv(conv.input_quantizer(xi), relu, int8=True)
        (y * g).sum().backward()
        res.append((y.detach(), xi.grad, conv.weight.grad.clone(), y.grad_fn.name(), y.stride()))
    assert res[0][3] == "_Int8SignConvBackward" and res[1][3] == "_Int8BinaryConvBackward"
    for a, b in zip(res[0][:3], res[1][:3], strict=True):
        assert torch.equal(a, b)
    assert res[0][4] == res[1][4] and res[0][0].is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )


def test_sign_fused_conv_keeps_uint8_codes_not_a_float_sign_tensor():
    conv = BinaryConv2d(16, 16, 3, 1, 1, input_quantizer="ste_sign", weight_quantizer="xnor_weight")
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    saved: dict[str, list[torch.Tensor]] = {}
    for name, run in (
        ("fused", lambda: conv(x)),
        ("unfused", lambda: conv._conv(conv.input_quantizer(x), False, int8=True)),
    ):
        saved[name] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, n=name: saved[n].append(t) or t, lambda t: t):
            run()

    def act(ts, dtype):  # saved tensors of the activation's shape
        return [t for t in ts if t.shape == x.shape and t.dtype == dtype]

    assert len(act(saved["fused"], torch.float32)) == 1 and len(act(saved["fused"], torch.uint8)) == 1
    assert len(act(saved["unfused"], torch.float32)) == 2  # x for the STE and sign(x) for the weight gradient
