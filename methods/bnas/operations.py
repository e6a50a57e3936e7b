"""The candidate operations of S_B as used in the final (discrete) BNAS networks (bnas.md §1.3, §2).

Binary ops are BatchNorm -> sign -> conv with XNOR-binarised weights -> ReLU (XNOR-Net's block order plus a ReLU;
no BN after the conv). Pools carry no BN in the final networks. Zeroise outputs zeros of the right shape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from methods.binary import BinaryConv2d, XnorWeight

__all__ = ["OPS", "BinConvBlock", "Zeroise", "xnor_weight_quantizer"]


def xnor_weight_quantizer() -> nn.Module:
    """The release's weight binarisation: centre over C_in, clamp to [-1, 1], alpha*sign(W), gradient rescale."""
    return XnorWeight(center=True, clamp=True, grad="xnor_rescale")


class BinConvBlock(nn.Module):
    """BN(C_in) -> sign -> conv (binary XNOR weights, no bias) -> ReLU (the release's BinReLUConvBN/BinDilConv)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int = 1, affine: bool = True
    ) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in, affine=affine)
        self.conv = BinaryConv2d(
            c_in,
            c_out,
            kernel,
            stride,
            padding,
            dilation,
            bias=False,
            input_quantizer="ste_sign",
            weight_quantizer=xnor_weight_quantizer(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x), relu=True)


class Zeroise(nn.Module):
    """Outputs zeros; with stride 2 the shape of x[:, :, ::2, ::2] (bnas.md §2)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return torch.zeros_like(x)
        return x.new_zeros(x.shape[0], x.shape[1], (x.shape[2] + 1) // 2, (x.shape[3] + 1) // 2)


OpFactory = Callable[[int, int, bool], nn.Module]

OPS: dict[str, OpFactory] = {
    "none": lambda c, stride, affine: Zeroise(stride),
    "max_pool_3x3": lambda c, stride, affine: nn.MaxPool2d(3, stride, 1),
    "avg_pool_3x3": lambda c, stride, affine: nn.AvgPool2d(3, stride, 1, count_include_pad=False),
    "bin_dil_conv_3x3": lambda c, stride, affine: BinConvBlock(c, c, 3, stride, 2, 2, affine),
    "bin_dil_conv_5x5": lambda c, stride, affine: BinConvBlock(c, c, 5, stride, 4, 2, affine),
    "bin_conv_3x3": lambda c, stride, affine: BinConvBlock(c, c, 3, stride, 1, 1, affine),
    "bin_conv_5x5": lambda c, stride, affine: BinConvBlock(c, c, 5, stride, 2, 1, affine),
}
