"""ReAct-ResNet-18: Bi-Real-18 with ReActNet's RSign before every binary conv and RPReLU after every block.

Liu, Shen, Savvides, Cheng, "ReActNet: Towards Precise Binary Neural Network with Generalized Activation Functions",
ECCV 2020, arXiv 2003.03488 (details as the official release has them: methods/binary/react.py). A block is
y = RPReLU(BN(BinConv3x3(RSign(x))) + shortcut(x)), the shortcut Bi-Real's (identity, or AvgPool 2x2 -> real 1x1 conv
-> BN where the shape changes); the stem (conv, BN, no activation, max-pool) and the classifier stay real.

`weight_binary=False` keeps the weights real: step 1 of ReActNet's two-step recipe (binary activations first).
Differences from the release, as options still to add (issue 18): its binary weights start U[0, 1e-3) (all +1; here
timm's Kaiming init), and its loss is distillation from a real-valued teacher only.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from methods.baselines._binary_resnet import BinaryResNet, BiRealBlock, ConvFactory, cfg, check_resnet_kwargs
from methods.binary import BinaryConv2d
from methods.binary.react import RPReLU, RSign, ScaledSignWeight
from methods.registry import MethodInfo, describe_models

__all__ = ["ReActBlock", "react_resnet18", "react_resnet18_cifar"]

_FAMILY_KWARGS = ("weight_binary",)


def react_conv_factory(weight_binary: bool = True) -> ConvFactory:
    """3x3 BinaryConv2d with an RSign of its input channels and, unless `weight_binary` is False, scaled-sign
    weights."""

    def make(cin: int, cout: int, stride: int, out_size: tuple[int, int]) -> nn.Module:
        wq = ScaledSignWeight() if weight_binary else None
        return BinaryConv2d(cin, cout, 3, stride, 1, bias=False, input_quantizer=RSign(cin), weight_quantizer=wq)

    return make


class ReActBlock(BiRealBlock):
    """Bi-Real's block with an RPReLU after the shortcut add."""

    def __init__(self, cin: int, cout: int, stride: int, out_size: tuple[int, int], conv: ConvFactory) -> None:
        super().__init__(cin, cout, stride, out_size, conv)
        self.act = RPReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


def _create(variant: str, pretrained: bool, **kwargs: Any) -> BinaryResNet:
    check_resnet_kwargs(variant, kwargs, _FAMILY_KWARGS)
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights")
    conv = react_conv_factory(weight_binary=kwargs.pop("weight_binary", True))
    return build_model_with_cfg(BinaryResNet, variant, pretrained=False, block=ReActBlock, conv=conv, **kwargs)


default_cfgs = generate_default_cfgs(
    {"react_resnet18.untrained": cfg(cifar=False), "react_resnet18_cifar.untrained": cfg(cifar=True)}
)


@register_model
def react_resnet18(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """ReAct-ResNet-18, ImageNet stem (224x224)."""
    return _create("react_resnet18", pretrained, **dict({"layers": (4, 4, 4, 4)}, **kwargs))


@register_model
def react_resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """ReAct-ResNet-18, CIFAR stem (32x32)."""
    args = {"layers": (4, 4, 4, 4), "cifar_stem": True, "img_size": 32, "num_classes": 10}
    return _create("react_resnet18_cifar", pretrained, **dict(args, **kwargs))


REACTNET = MethodInfo("ReActNet", "Sign + Scale", "Liu, Shen, Savvides, Cheng, ECCV 2020, arXiv 2003.03488")
describe_models(("react_resnet18", "react_resnet18_cifar"), REACTNET)
