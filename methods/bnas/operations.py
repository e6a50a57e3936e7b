"""The candidate operations of the BNAS search spaces as used in the final (discrete) networks (docs/bnas.md §1.3, §2).

Kim, Singh, Choi, "Learning Architectures for Binary Networks", ECCV 2020, arXiv 2002.06963.

Binary ops are BatchNorm -> sign -> conv with XNOR-binarised weights -> ReLU (XNOR-Net's block order plus a ReLU;
no BN after the conv). Pools carry no BN in the final networks. Zeroise outputs zeros of the right shape.

S_B (the paper's space) has Zeroise, two pools and four binary convs. The DARTS space (Liu et al., "DARTS", ICLR 2019)
is also available with its convs binarised in the same way (the paper argues that separable convs are detrimental to
binary networks; this space tests that claim): `bin_sep_conv_*` (DARTS SepConv), `bin_dil_sep_conv_*` (DARTS DilConv)
and `skip_connect`. Every conv of these ops is binary (its own BN -> sign on its input, XNOR weights, ReLU after);
the depthwise convs use :class:`DepthwiseXnorWeight` (no centring, see there). BATS's space (Bulat et al., ECCV 2020)
has `bats_group_conv_*` and `bats_dil_group_conv_*` instead (:class:`BatsGroupConv`: one binary grouped conv with
alpha * sign weights and a learned channel scale, PReLU, channel shuffle, identity skip).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from methods.binary import BinaryConv2d, XnorWeight
from methods.binary.scaling import LearnedScale

__all__ = [
    "CONV_OPS",
    "OP_SPECS",
    "OpSpec",
    "build_op",
    "conv_geometry",
    "BinConvBlock",
    "BinDilSepConv",
    "BinFactorizedReduce",
    "BinSepConv",
    "BatsGroupConv",
    "bats_groups",
    "channel_shuffle",
    "DepthwiseXnorWeight",
    "Zeroise",
    "depthwise_xnor_weight_quantizer",
    "xnor_weight_quantizer",
]


def xnor_weight_quantizer() -> nn.Module:
    """The release's weight binarisation: centre over C_in, clamp to [-1, 1], alpha*sign(W), gradient rescale."""
    return XnorWeight(center=True, clamp=True, grad="xnor_rescale")


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times a constant."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return g * ctx.factor, None


class DepthwiseXnorWeight(XnorWeight):
    """XNOR weights for a conv with one input channel per filter (depthwise, weight shape (C, 1, k, k)).

    The release's recipe (:func:`xnor_weight_quantizer`) degenerates there: centring over the single input channel
    sets every latent weight to 0, and its gradient rescale n * (1 - 1/C_in) is 0. This one clamps to [-1, 1] without
    centring, binarises to alpha * sign(W) (alpha = mean |W| over the k x k filter) and scales the exact gradient by
    n = k * k: the release's rescale without its centring factor. (A project choice; the release has no depthwise
    binary convs.) Its `grad` is "exact", so the release-order gradient clip treats these weights as un-rescaled.
    """

    def __init__(self) -> None:
        super().__init__(center=False, clamp=True, grad="exact")

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _ScaleGrad.apply(super().forward(w), float(w[0].numel()))


def depthwise_xnor_weight_quantizer() -> nn.Module:
    """:class:`DepthwiseXnorWeight`: the XNOR binarisation of depthwise convs."""
    return DepthwiseXnorWeight()


class BinConvBlock(nn.Module):
    """BN(C_in) -> sign -> conv (binary XNOR weights, no bias) -> ReLU (the release's BinReLUConvBN/BinDilConv).

    `groups` = C_in (= C_out) makes it a binary depthwise conv (with :class:`DepthwiseXnorWeight`); it stays on the
    float conv path (the int8 CPU forward is for groups = 1).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int,
        padding: int,
        dilation: int = 1,
        affine: bool = True,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in, affine=affine)
        depthwise = c_in // groups == 1
        self.conv = BinaryConv2d(
            c_in,
            c_out,
            kernel,
            stride,
            padding,
            dilation,
            groups,
            bias=False,
            input_quantizer="ste_sign",
            weight_quantizer=depthwise_xnor_weight_quantizer() if depthwise else xnor_weight_quantizer(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x), relu=True)


class BinSepConv(nn.Sequential):
    """DARTS's SepConv binarised: (depthwise k x k, stride s -> pointwise 1x1), then the same again with stride 1.

    Each of the four convs is a :class:`BinConvBlock` (BN -> sign -> XNOR conv -> ReLU), where DARTS has
    ReLU -> depthwise -> pointwise -> BN twice (Liu et al., ICLR 2019). Real: the BNs and the ReLUs.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True) -> None:
        super().__init__(
            BinConvBlock(c_in, c_in, kernel, stride, padding, 1, affine, groups=c_in),
            BinConvBlock(c_in, c_in, 1, 1, 0, 1, affine),
            BinConvBlock(c_in, c_in, kernel, 1, padding, 1, affine, groups=c_in),
            BinConvBlock(c_in, c_out, 1, 1, 0, 1, affine),
        )


class BinDilSepConv(nn.Sequential):
    """DARTS's DilConv binarised: depthwise k x k with dilation 2 (stride s) -> pointwise 1x1, each a
    :class:`BinConvBlock` (DARTS: ReLU -> depthwise -> pointwise -> BN). Real: the BNs and the ReLUs."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int = 2, affine: bool = True
    ) -> None:
        super().__init__(
            BinConvBlock(c_in, c_in, kernel, stride, padding, dilation, affine, groups=c_in),
            BinConvBlock(c_in, c_out, 1, 1, 0, 1, affine),
        )


class BinFactorizedReduce(nn.Module):
    """DARTS's FactorizedReduce binarised (skip_connect at stride 2): BN(C_in) -> sign, two 1x1 stride-2 XNOR convs
    (C_out / 2 filters each) on it and on it shifted by one pixel (x[:, :, 1:, 1:]), concatenated -> ReLU.

    DARTS has ReLU -> the two real convs -> concat -> BN. Real: the input BN and the ReLU. For an odd input size the
    shifted conv's output is padded with zeros at the bottom/right (= zero-padding its binary input, the convs'
    padding convention), so both halves have the ceil(H / 2) x ceil(W / 2) shape of the other stride-2 ops.
    """

    def __init__(self, c_in: int, c_out: int, affine: bool = True) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"BinFactorizedReduce needs an even number of output channels, got {c_out}")
        self.bn = nn.BatchNorm2d(c_in, affine=affine)
        q: dict[str, Any] = {"bias": False, "input_quantizer": "ste_sign"}
        self.conv_1 = BinaryConv2d(c_in, c_out // 2, 1, 2, 0, weight_quantizer=xnor_weight_quantizer(), **q)
        self.conv_2 = BinaryConv2d(c_in, c_out // 2, 1, 2, 0, weight_quantizer=xnor_weight_quantizer(), **q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(x)
        a = self.conv_1(h, relu=True)
        b = self.conv_2(h[:, :, 1:, 1:], relu=True)
        if b.shape[2:] != a.shape[2:]:
            b = F.pad(b, (0, a.shape[3] - b.shape[3], 0, a.shape[2] - b.shape[2]))
        return torch.cat([a, b], dim=1)


BATS_GROUPS = 12  # BATS's grouped convs: 12 groups (bnn's bats_ops.py), where the width allows it
BATS_SHUFFLE = 4  # and a channel shuffle over 4 groups after each


def bats_groups(c: int, groups: int = BATS_GROUPS) -> int:
    """The groups of a BATS grouped conv on `c` channels: `groups` (12, the code's) when it divides `c`, else the
    largest divisor of `c` below it (an INFERRED rule: the code's networks only have widths that 12 divides; the
    harness's shrunken profiles do not, C = 8 gives 8 groups, i.e. a depthwise conv)."""
    return max(g for g in range(1, min(groups, c) + 1) if c % g == 0)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle (Zhang et al., CVPR 2018; torch's `F.channel_shuffle`), or `x` unchanged when
    `groups` does not divide its channels (the shrunken profiles' widths)."""
    if groups <= 1 or x.shape[1] % groups:
        return x
    return F.channel_shuffle(x, groups)


class BatsGroupConv(nn.Module):
    """BATS's binary conv op (Bulat, Martinez, Tzimiropoulos, ECCV 2020; bnn's bats_ops.py, read only): BN -> sign ->
    k x k GROUPED conv with alpha * sign weights (alpha = mean |W| per filter: bnn's optional XNOR scale, on here) and a
    learned per-channel output scale (bnn's BasicScaleBinarizer, initialised to ones) -> PReLU, then a channel
    shuffle; at stride 1 with an identity skip, x + op(x) (the code forces it on).

    Why alpha is on (INFERRED: the code offers both): without it the binary weights are +-1 while the latent ones are
    ~0.1, so the binary-first search's switch from real to binary weights multiplies every op's output by ~10; in a
    quick BATS search that made the supernet's loss jump from 2.6 to 17.5 at the switch.

    Real: the BN, the scale, the PReLU and the skip. The "sep_conv_k" of BATS's space is this op without dilation, its
    "dil_conv_k" the same with dilation 2 (harness names: bats_group_conv_k, bats_dil_group_conv_k).
    """

    def __init__(
        self,
        c: int,
        kernel: int,
        stride: int,
        padding: int,
        dilation: int = 1,
        affine: bool = True,
        groups: int = BATS_GROUPS,
        shuffle: int = BATS_SHUFFLE,
    ) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c, affine=affine)
        self.conv = BinaryConv2d(
            c,
            c,
            kernel,
            stride,
            padding,
            dilation,
            bats_groups(c, groups),
            bias=False,
            input_quantizer="ste_sign",
            weight_quantizer=XnorWeight(center=False, clamp=False, grad="ste"),
            scale=LearnedScale(c, "channel"),
        )
        self.act = nn.PReLU(c)
        self.shuffle = shuffle
        self.residual = stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = channel_shuffle(self.act(self.conv(self.bn(x))), self.shuffle)
        return x + h if self.residual else h


def skip_connect(c: int, stride: int, affine: bool) -> nn.Module:
    """DARTS's skip_connect: the identity (real) at stride 1, :class:`BinFactorizedReduce` at stride 2."""
    return nn.Identity() if stride == 1 else BinFactorizedReduce(c, c, affine)


class Zeroise(nn.Module):
    """Outputs zeros; with stride 2 the shape of x[:, :, ::2, ::2] (docs/bnas.md §2)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return torch.zeros_like(x)
        return x.new_zeros(x.shape[0], x.shape[1], (x.shape[2] + 1) // 2, (x.shape[3] + 1) // 2)


OpKind = Literal["zero", "max_pool", "avg_pool", "conv", "sep_conv", "dil_sep_conv", "skip", "group_conv"]


@dataclass(frozen=True)
class OpSpec:
    """One candidate op of a search space (docs/bnas.md §2): what it is and, for pools and convs, its geometry."""

    kind: OpKind
    kernel: int = 0
    dilation: int = 1

    @property
    def padding(self) -> int:
        """The padding that keeps the spatial size at stride 1: dilation * (kernel - 1) / 2."""
        return self.dilation * (self.kernel - 1) // 2


# The one op vocabulary: the final networks (`build_op`), the per-op search cell and the shared one all read it.
OP_SPECS: dict[str, OpSpec] = {
    # S_B, the paper's space, in its op order
    "none": OpSpec("zero"),
    "max_pool_3x3": OpSpec("max_pool", 3),
    "avg_pool_3x3": OpSpec("avg_pool", 3),
    "bin_dil_conv_3x3": OpSpec("conv", 3, 2),
    "bin_dil_conv_5x5": OpSpec("conv", 5, 2),
    "bin_conv_3x3": OpSpec("conv", 3),
    "bin_conv_5x5": OpSpec("conv", 5),
    # the DARTS space, binarised (Liu et al., ICLR 2019)
    "skip_connect": OpSpec("skip"),
    "bin_sep_conv_3x3": OpSpec("sep_conv", 3),
    "bin_sep_conv_5x5": OpSpec("sep_conv", 5),
    "bin_dil_sep_conv_3x3": OpSpec("dil_sep_conv", 3, 2),
    "bin_dil_sep_conv_5x5": OpSpec("dil_sep_conv", 5, 2),
    # BATS's space (Bulat et al., ECCV 2020): binary grouped convs with channel shuffle
    "bats_group_conv_3x3": OpSpec("group_conv", 3),
    "bats_group_conv_5x5": OpSpec("group_conv", 5),
    "bats_dil_group_conv_3x3": OpSpec("group_conv", 3, 2),
    "bats_dil_group_conv_5x5": OpSpec("group_conv", 5, 2),
}
# the single-conv ops (one binary conv each): S_B's four convs
CONV_OPS: tuple[str, ...] = tuple(name for name, spec in OP_SPECS.items() if spec.kind == "conv")


def conv_geometry(name: str) -> tuple[int, int, int]:
    """(kernel, dilation, padding) of a single-conv op (one of `CONV_OPS`).

    Raises:
        ValueError: not a single-conv op.
    """
    if name not in CONV_OPS:
        raise ValueError(f"conv_geometry: {name!r} is not a single-conv op of S_B ({', '.join(CONV_OPS)})")
    spec = OP_SPECS[name]
    return spec.kernel, spec.dilation, spec.padding


def build_op(name: str, c: int, stride: int, affine: bool) -> nn.Module:
    """Op `name` of the final networks on C channels: Zeroise, a pool without BN, or its binary convs.

    Raises:
        ValueError: an op outside `OP_SPECS`.
    """
    spec = OP_SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown op {name!r}; expected one of {', '.join(OP_SPECS)}")
    k, pad, dil = spec.kernel, spec.padding, spec.dilation
    if spec.kind == "zero":
        return Zeroise(stride)
    if spec.kind == "max_pool":
        return nn.MaxPool2d(k, stride, pad)
    if spec.kind == "avg_pool":
        return nn.AvgPool2d(k, stride, pad, count_include_pad=False)
    if spec.kind == "conv":
        return BinConvBlock(c, c, k, stride, pad, dil, affine)
    if spec.kind == "sep_conv":
        return BinSepConv(c, c, k, stride, pad, affine)
    if spec.kind == "dil_sep_conv":
        return BinDilSepConv(c, c, k, stride, pad, dil, affine)
    if spec.kind == "group_conv":
        return BatsGroupConv(c, k, stride, pad, dil, affine)
    return skip_connect(c, stride, affine)
