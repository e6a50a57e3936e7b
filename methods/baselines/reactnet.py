"""ReActNet: ReAct-ResNet-18 (Bi-Real-18 with RSign and RPReLU) and ReActNet-A (MobileNet-V1 layout, all-binary).

Liu, Shen, Savvides, Cheng, "ReActNet: Towards Precise Binary Neural Network with Generalized Activation Functions",
ECCV 2020, arXiv 2003.03488 (details as the official release has them: methods/binary/react.py). A block is
y = RPReLU(BN(BinConv3x3(RSign(x))) + shortcut(x)), the shortcut Bi-Real's (identity, or AvgPool 2x2 -> real 1x1 conv
-> BN where the shape changes); the stem (conv, BN, no activation, max-pool) and the classifier stay real.

ReActNet-A (the release's MobileNet layout): a real 3x3/2 stem conv (3 -> 32) with BN and no activation, then 13
blocks of output widths 64, 128, 128, 256, 256, 512 x 6, 1024 x 2 (stride 2 wherever the width changes, except
32 -> 64), a global average pool and a real classifier. A block is
  o1 = RPReLU(BN(BinConv3x3_{C -> C, stride s}(RSign(x))) + P(x)),  P = AvgPool 2x2 if s = 2 else identity,
  out = RPReLU(BN(BinConv1x1_{C -> C'}(RSign(o1))) + [o1] (C' = C) or [o1, o1] (C' = 2C)),
the C -> 2C case being the release's two separate 1x1 convs (each with its BN, each added to o1, concatenated): one
conv with 2C filters and one BN of 2C channels is the same function. Every shortcut is parameter-free; only the stem
and the classifier are real. The `_cifar` variant's stem has stride 1 (32x32 inputs; INFERRED, the paper has no
CIFAR model).

`weight_binary=False` keeps the weights real: step 1 of ReActNet's two-step recipe (binary activations first).
`weight_init="release"` starts the binary convs' latent weights U[0, 1e-3) as the release does (every weight +1, all
filters alike at the first step); the default is timm's Kaiming init. The loss (distillation from a real teacher) and
the schedule are the training recipe's (train.teacher, docs/recipes.md).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from methods.baselines._binary_resnet import (
    BinaryResNet,
    BiRealBlock,
    ClassifierSurface,
    ConvFactory,
    cfg,
    check_resnet_kwargs,
)
from methods.binary import BinaryConv2d
from methods.binary.react import RPReLU, RSign, ScaledSignWeight
from methods.registry import MethodInfo, check_model_kwargs, constructor_kwargs, describe_models

__all__ = ["ReActBlock", "ReActNetA", "react_resnet18", "react_resnet18_cifar", "reactnet_a", "reactnet_a_cifar"]

_FAMILY_KWARGS = ("weight_binary", "weight_init")


def _release_init(model: nn.Module) -> None:
    """The release's binary-conv init: latent weights U[0, 1e-3) (all +1 once binarised)."""
    for m in model.modules():
        if isinstance(m, BinaryConv2d) and m.binary_input:
            nn.init.uniform_(m.weight, 0.0, 1e-3)


def _check_init(variant: str, init: str) -> None:
    if init not in ("kaiming", "release"):
        raise ValueError(f"{variant}: weight_init must be 'kaiming' or 'release', got {init!r}")


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
    init = kwargs.pop("weight_init", "kaiming")
    _check_init(variant, init)
    conv = react_conv_factory(weight_binary=kwargs.pop("weight_binary", True))
    model = build_model_with_cfg(BinaryResNet, variant, pretrained=False, block=ReActBlock, conv=conv, **kwargs)
    if init == "release":
        _release_init(model)
    return model


def _binary(cin: int, cout: int, k: int, stride: int, weight_binary: bool) -> BinaryConv2d:
    wq = ScaledSignWeight() if weight_binary else None
    return BinaryConv2d(cin, cout, k, stride, k // 2, bias=False, input_quantizer=RSign(cin), weight_quantizer=wq)


class ReActNetABlock(nn.Module):
    """ReActNet-A's block (module docstring): a binary 3x3 conv C -> C and a binary 1x1 conv C -> C' (C or 2C), each
    with BN, a parameter-free shortcut and an RPReLU."""

    def __init__(self, cin: int, cout: int, stride: int, weight_binary: bool = True) -> None:
        super().__init__()
        if cout not in (cin, 2 * cin):
            raise ValueError(f"ReActNet-A block: output width {cout} must be {cin} or {2 * cin}")
        self.conv3x3 = _binary(cin, cin, 3, stride, weight_binary)
        self.bn1 = nn.BatchNorm2d(cin)
        self.pool: nn.Module = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()
        self.act1 = RPReLU(cin)
        self.conv1x1 = _binary(cin, cout, 1, 1, weight_binary)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = RPReLU(cout)
        self.repeat = cout // cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o1 = self.act1(self.bn1(self.conv3x3(x)) + self.pool(x))
        short = o1 if self.repeat == 1 else torch.cat([o1] * self.repeat, dim=1)
        return self.act2(self.bn2(self.conv1x1(o1)) + short)


# (output width, stride) of ReActNet-A's 13 blocks (the release's MobileNet-V1 layout)
REACTNET_A_STAGES = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


class ReActNetA(ClassifierSurface):
    """ReActNet-A (module docstring), on timm's model surface.

    Args:
        stem_stride: 2 (ImageNet, 224x224) or 1 (the CIFAR variant).
        width_mult: every width x this (1.0: the paper's).
        weight_binary: False keeps the weights real (step 1).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        stem_stride: int = 2,
        width_mult: float = 1.0,
        weight_binary: bool = True,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        c = max(1, round(32 * width_mult))
        self.conv_stem = nn.Conv2d(in_chans, c, 3, stem_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        blocks, reduction = [], stem_stride
        self.feature_info = []
        for i, (w, s) in enumerate(REACTNET_A_STAGES):
            w = max(1, round(w * width_mult))
            blocks.append(ReActNetABlock(c, w, s, weight_binary))
            reduction *= s
            self.feature_info.append({"num_chs": w, "reduction": reduction, "module": f"blocks.{i}"})
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.num_features = self.head_hidden_size = c
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(c, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.bn1(self.conv_stem(x)))


_REACTNET_A_KWARGS = constructor_kwargs(ReActNetA) | {"weight_init"}


def _create_a(variant: str, pretrained: bool, **kwargs: Any) -> ReActNetA:
    check_model_kwargs(variant, kwargs, _REACTNET_A_KWARGS, features=True)
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights")
    init = kwargs.pop("weight_init", "kaiming")
    _check_init(variant, init)
    model = build_model_with_cfg(ReActNetA, variant, pretrained=False, **kwargs)
    if init == "release":
        _release_init(model)
    return model


default_cfgs = generate_default_cfgs(
    {
        "react_resnet18.untrained": cfg(cifar=False),
        "react_resnet18_cifar.untrained": cfg(cifar=True),
        "reactnet_a.untrained": cfg(cifar=False, first_conv="conv_stem"),
        "reactnet_a_cifar.untrained": cfg(cifar=True, first_conv="conv_stem", pool_size=(2, 2)),
    }
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


@register_model
def reactnet_a(pretrained: bool = False, **kwargs: Any) -> ReActNetA:
    """ReActNet-A, ImageNet (224x224)."""
    return _create_a("reactnet_a", pretrained, **kwargs)


@register_model
def reactnet_a_cifar(pretrained: bool = False, **kwargs: Any) -> ReActNetA:
    """ReActNet-A with a stride-1 stem for 32x32 inputs (INFERRED: the paper has no CIFAR model)."""
    return _create_a("reactnet_a_cifar", pretrained, **dict({"stem_stride": 1, "num_classes": 10}, **kwargs))


REACTNET = MethodInfo(
    "ReActNet", "Sign + Scale", "Liu, Shen, Savvides, Cheng, ECCV 2020, arXiv 2003.03488", pretraining=True
)
describe_models(("react_resnet18", "react_resnet18_cifar", "reactnet_a", "reactnet_a_cifar"), REACTNET)
