"""Exact integer forward of binary convolutions on CPU (oneDNN int8, VNNI where the CPU has it).

A binary conv's input is sign(x) in {-1, +1} (zero padding adds 0) and every output filter of its weight is
+-alpha_c (XNOR-Net, Bi-Real, BinaryNet). Its output is therefore alpha_c times an integer sum, which an int8 conv
with int32 accumulation computes exactly (docs/internals.md, "CPU kernels"). The input goes in as uint8
{0, 2} with zero point 1 (so the zero padding, which oneDNN fills with the zero point, is 0), the weight as int8
{-1, +1} with per-filter scale alpha_c; the output comes back in float32 as fp32(k * alpha_c), rounded once. The
float32 path (F.conv2d) sums +-alpha_c terms and rounds at every partial sum, so the two can differ by a few ulp;
when alpha_c is a power of two both are exact and bit-equal (tested). The backward pass is the float32 conv
backward on the same binary tensors, unchanged.

On these 2-core Zen 4 machines the forward binary convs of the BNAS search run 2-6x faster than oneDNN's float32
convs (64x16x32x32 5x5: 27.6 -> 5.1 ms). `set_int8_conv(False)` (or `BNAS_INT8_CONV=0`) turns the path off.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "backward_will_use",
    "gradient_edge",
    "int8_binary_conv2d",
    "int8_conv_available",
    "int8_conv_enabled",
    "int8_conv_forward",
    "int8_sign_conv2d",
    "set_int8_conv",
    "sign_codes",
    "signs_from_codes",
]

_enabled = os.environ.get("BNAS_INT8_CONV", "1") not in ("0", "false", "False")

# oneDNN reorders an NCHW uint8 input itself; above this many input channels our own reorder is faster
_CL_CHANNELS = 64


_ONE = torch.ones(1)


def gradient_edge(t: torch.Tensor) -> object | None:
    """t's gradient edge (for :func:`backward_will_use`), None if t does not require grad."""
    return torch.autograd.graph.get_gradient_edge(t) if t.requires_grad else None


def backward_will_use(edge: object) -> bool:
    """Whether the backward pass in progress will use this gradient edge (torch.autograd.grad(..., inputs=...)
    skips the rest: the BNAS architecture step never computes weight gradients). True when it cannot tell."""
    try:
        return bool(torch._C._will_engine_execute_node(edge.node))  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        return True


def set_int8_conv(enabled: bool) -> None:
    """Use (True, the default) or skip the exact int8 forward for eligible binary convs on CPU."""
    global _enabled
    _enabled = bool(enabled)


def int8_conv_enabled() -> bool:
    """Whether eligible binary convs use the int8 forward (enabled and available on this build/CPU)."""
    return _enabled and int8_conv_available()


@functools.cache
def int8_conv_available() -> bool:
    """True if this torch build has oneDNN's int8 conv and a tiny binary conv through it matches float64."""
    ops = getattr(torch.ops, "onednn", None)
    if ops is None or not hasattr(ops, "qconv2d_pointwise") or not torch.backends.mkldnn.is_available():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 5, 6, 6, generator=g).sign()
        w = torch.randn(4, 5, 3, 3, generator=g).sign() * torch.tensor([0.5, 0.25, 1.0, 2.0]).view(-1, 1, 1, 1)
        y = int8_conv_forward(x, w, (1, 1), (1, 1), (1, 1), relu=False)
        return torch.equal(y, F.conv2d(x.double(), w.double(), None, 1, 1).float())
    except (RuntimeError, NotImplementedError):
        return False


def _pair(v: int | tuple[int, ...]) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether x is channels_last and not also contiguous (a 4-D tensor's layout, ambiguous ones counted NCHW)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def sign_codes(x: torch.Tensor) -> torch.Tensor:
    """sign(x) (sign(0) = sign(-0.0) = +1) as the int8 conv's uint8 input: 2 for +1, 0 for -1; x's layout."""
    return torch.ge(x, 0).view(torch.uint8).mul_(2)


def signs_from_codes(xu: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The +-1 tensor (in `dtype`, xu's layout) of :func:`sign_codes`' output."""
    return xu.to(dtype).sub_(1.0)


def int8_conv_forward(
    x: torch.Tensor,
    w: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    relu: bool,
    any_layout: bool = False,
    codes: torch.Tensor | None = None,
) -> torch.Tensor:
    """The int8 forward alone (no autograd): see :func:`int8_binary_conv2d`; `stride`, `padding`, `dilation` are
    2-lists. `codes`: x's :func:`sign_codes`, if the caller has them (then x only gives the shape and layout)."""
    alpha = w.abs().amax(dim=(1, 2, 3)).contiguous()
    w8 = torch.sign(w).to(torch.int8)
    xu = sign_codes(x) if codes is None else codes  # {-1, +1} -> {0, 2}, zero point 1
    if x.shape[1] > _CL_CHANNELS:
        xu = xu.contiguous(memory_format=torch.channels_last)
    ops = torch.ops.onednn
    # the per-filter scales are applied at run time (qconv2d_pointwise's w_scale); the prepack's own scale argument
    # is not used for the arithmetic (checked by int8_conv_available and the tests), and a per-filter one costs a
    # Python-level read per filter
    qw = ops.qconv_prepack(w8, _ONE, 1.0, 1, stride, padding, dilation, 1, list(x.shape))
    zp = torch.zeros(w.shape[0], dtype=torch.long)
    y = ops.qconv2d_pointwise(
        xu, 1.0, 1, qw, alpha, zp, None, stride, padding, dilation, 1, 1.0, 0, torch.float32,
        "relu" if relu else "none", [], "",
    )  # fmt: skip
    if any_layout or is_channels_last(x):
        return y
    return y.contiguous()  # oneDNN's output is channels_last


class _Int8BinaryConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, stride, padding, dilation, relu, any_layout):  # type: ignore[override]
        y = int8_conv_forward(x.detach(), w.detach(), stride, padding, dilation, relu, any_layout)
        ctx.save_for_backward(x, w, y if relu else None)
        ctx.conf = (stride, padding, dilation, relu)
        ctx.edges = [gradient_edge(x), gradient_edge(w)]
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, w, y = ctx.saved_tensors
        gx, gw = _conv_backward(ctx, g, x, w, y)
        return gx, gw, None, None, None, None, None


def _conv_backward(
    ctx: Any, g: torch.Tensor, x: torch.Tensor, w: torch.Tensor, y: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients w.r.t. the conv's (+-1) input x and weight w, each only if the backward pass will use it; through
    the fused ReLU (its output y) when there was one. `ctx.conf` starts with (stride, padding, dilation, relu)."""
    stride, padding, dilation, relu = ctx.conf[:4]
    if relu:
        g = torch.ops.aten.threshold_backward(g, y, 0)
    need = [e is not None and backward_will_use(e) for e in ctx.edges] + [False]
    gx, gw, _ = torch.ops.aten.convolution_backward(g, x, w, None, stride, padding, dilation, False, [0, 0], 1, need)
    return gx, gw


class _Int8SignConv(torch.autograd.Function):
    """conv(sign(x), w) with the sign inside: only x's uint8 codes are made and kept (no float +-1 tensor in the
    forward pass); the backward rebuilds +-1 from them for the weight gradient and applies the sign's gradient."""

    @staticmethod
    def forward(ctx, x, w, stride, padding, dilation, relu, sign_grad):  # type: ignore[override]
        xu = sign_codes(x.detach())
        y = int8_conv_forward(x.detach(), w.detach(), stride, padding, dilation, relu, codes=xu)
        ctx.save_for_backward(x, xu, w, y if relu else None)
        ctx.conf = (stride, padding, dilation, relu, sign_grad)
        ctx.edges = [gradient_edge(x), gradient_edge(w)]
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, xu, w, y = ctx.saved_tensors
        gx, gw = _conv_backward(ctx, g, signs_from_codes(xu, x.dtype), w, y)
        if gx is not None:
            gx = ctx.conf[4](gx, x)  # the sign's estimator
        return gx, gw, None, None, None, None, None


def int8_sign_conv2d(
    x: torch.Tensor,
    w: torch.Tensor,
    sign_grad: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    relu: bool = False,
) -> torch.Tensor:
    """conv2d(sign(x), w) (then ReLU if `relu`), sign(0) = +1, as :func:`int8_binary_conv2d` of sign(x) but with the
    sign fused in: `sign_grad(g, x)` gives the gradient w.r.t. x from the gradient w.r.t. sign(x) (the input
    quantizer's estimator: STE, ApproxSign). Same values and gradients as the unfused path, bit for bit; it skips the
    float +-1 tensor in the forward pass (two passes over the input and its saved copy: the wide BNAS-A
    preprocessing inputs are 19-38 MB each)."""
    return _Int8SignConv.apply(x, w, _pair(stride), _pair(padding), _pair(dilation), relu, sign_grad)


def int8_binary_conv2d(
    x: torch.Tensor,
    w: torch.Tensor,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    relu: bool = False,
    any_layout: bool = False,
) -> torch.Tensor:
    """conv2d(x, w) (then ReLU if `relu`) for x in {-1, +1} and filters w[c] in {-alpha_c, +alpha_c}, float32, CPU.

    Forward: exact int8 x int8 -> int32 conv (oneDNN), times alpha_c, rounded once to float32. Backward: the float32
    conv backward (gradients for x and w as F.conv2d's). The caller guarantees the binary values; groups 1, no bias.
    The output has x's layout (NCHW or channels_last), or stays in oneDNN's channels_last with `any_layout`.
    """
    return _Int8BinaryConv.apply(x, w, _pair(stride), _pair(padding), _pair(dilation), relu, any_layout)
