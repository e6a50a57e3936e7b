"""BinaryDuo ResNet-18: a coupled network with ternary activations, decoupled exactly into binary {0, 1} activations.

Kim, Kim, Kim, Kim, "BinaryDuo: Reducing Gradient Mismatch in Binary Activation Network by Coupling Binary
Activations", ICLR 2020, arXiv 2002.06517. Reported (ImageNet): ResNet-18 60.4/82.3 at 1.63e8 OPs. Details as the
official release (Hyungjun-K1m/BinaryDuo, Torch7, fb.resnet.torch based) has them:

- Stem: real conv 7x7/2 (64) -> BN -> ReLU -> max-pool -> BN.
- Blocks (2, 2, 2, 2) at the release's widths 64, 90, 180, 360 (about 1/sqrt(2) of 128/256/512, so that the
  decoupled network costs what a plain binary ResNet-18 does): y = x + BN(Conv(Q(BN(Conv(Q(x)))))), Q the
  activation quantizer on [0, 1], no activation after the add; the downsample shortcut AvgPool 2x2 -> real 1x1 conv
  -> BN. The last block's second conv outputs 512 and its shortcut zero-pads 360 channels to 512.
- Head: ReLU -> global average pool -> real FC(512).
- Binary: every 3x3 conv, with one weight scale per layer (methods/binary/duo.py).

`activation_levels=3` (default) builds the coupled network (stage 1); :func:`methods.binary.duo.decouple` turns it
into the decoupled one (stage 2), whose logits equal the coupled network's at the moment of conversion.
`activation_levels=2` builds a plain binary {0, 1} network of the same widths (no decoupling).
`decoupled=True` builds the decoupled network directly (the shape stage 2 has, for loading its weights).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from methods.baselines._binary_resnet import BinaryResNet, ConvFactory, cfg, check_resnet_kwargs, init_conv_bn
from methods.binary import BinaryConv2d
from methods.binary.duo import LayerScaleSign, UniformActivation, decouple
from methods.registry import MethodInfo, describe_models

__all__ = ["DuoBlock", "DuoResNet", "binaryduo_resnet18", "binaryduo_resnet18_cifar"]

DUO_WIDTHS = (64, 90, 180, 360)


def duo_conv_factory(levels: int, weight_binary: bool = True) -> ConvFactory:
    """3x3 BinaryConv2d with BinaryDuo's activation quantizer (`levels` 3 or 2) and per-layer-scale sign weights."""

    def make(cin: int, cout: int, stride: int, out_size: tuple[int, int]) -> nn.Module:
        wq = LayerScaleSign() if weight_binary else None
        return BinaryConv2d(
            cin, cout, 3, stride, 1, bias=False, input_quantizer=UniformActivation(levels), weight_quantizer=wq
        )

    return make


class DuoBlock(nn.Module):
    """y = shortcut(x) + BN(Conv(Q(BN(Conv(Q(x)))))); the second conv may widen (`out_channels`, the last block's 512),
    in which case the identity shortcut is zero-padded."""

    expansion = 1

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        out_size: tuple[int, int],
        conv: ConvFactory,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        cout2 = out_channels or cout
        self.conv1 = conv(cin, cout, stride, out_size)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv(cout, cout2, 1, out_size)
        self.bn2 = nn.BatchNorm2d(cout2)
        self.pad = 0
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            pool = nn.AvgPool2d(2, stride) if stride != 1 else nn.Identity()
            self.downsample = nn.Sequential(pool, nn.Conv2d(cin, cout2, 1, bias=False), nn.BatchNorm2d(cout2))
        elif cout2 != cin:
            self.pad = cout2 - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        short = self.downsample(x)
        if self.pad:
            short = F.pad(short, (0, 0, 0, 0, 0, self.pad))
        return out + short


class DuoResNet(BinaryResNet):
    """BinaryDuo's ResNet (module docstring): BinaryResNet with the release's stem, last block and head."""

    def __init__(
        self,
        layers: tuple[int, ...],
        conv: ConvFactory,
        num_classes: int = 1000,
        in_chans: int = 3,
        cifar_stem: bool = False,
        img_size: int = 224,
        widths: tuple[int, ...] = DUO_WIDTHS,
        last_width: int = 512,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__(DuoBlock, layers, conv, num_classes, in_chans, cifar_stem, img_size, widths, global_pool, 0.0)
        self.drop_rate = drop_rate
        w0, w_last = widths[0], widths[-1]
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.Sequential(self.maxpool, nn.BatchNorm2d(w0))  # the release's extra BN after the pool
        size = img_size // (2 ** (len(layers) - 1)) // (1 if cifar_stem else 4)
        last = DuoBlock(w_last, w_last, 1, (size, size), conv, out_channels=last_width)
        self.layer4[-1] = last
        self.layer4.append(nn.ReLU(inplace=True))
        self.feature_info[-1]["num_chs"] = last_width
        self.num_features = self.head_hidden_size = last_width
        self.fc = nn.Linear(last_width, num_classes) if num_classes > 0 else nn.Identity()
        for m in (last, self.maxpool, self.fc):  # the modules replaced or added after BinaryResNet's init
            init_conv_bn(m)


_FAMILY_KWARGS = ("activation_levels", "weight_binary", "decoupled", "last_width")


def _create(variant: str, pretrained: bool, **kwargs: Any) -> DuoResNet:
    check_resnet_kwargs(variant, kwargs, _FAMILY_KWARGS)
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights")
    levels = kwargs.pop("activation_levels", 3)
    decoupled = kwargs.pop("decoupled", False)
    if levels not in (2, 3):
        raise ValueError(f"{variant}: activation_levels must be 3 (coupled) or 2 (binary), got {levels}")
    if decoupled and levels != 3:
        raise ValueError(f"{variant}: decoupled=True needs activation_levels=3 (the coupled network it comes from)")
    conv = duo_conv_factory(levels, kwargs.pop("weight_binary", True))
    model = build_model_with_cfg(DuoResNet, variant, pretrained=False, conv=conv, **kwargs)
    if decoupled:
        decouple(model)
    return model


default_cfgs = generate_default_cfgs(
    {"binaryduo_resnet18.untrained": cfg(cifar=False), "binaryduo_resnet18_cifar.untrained": cfg(cifar=True)}
)


@register_model
def binaryduo_resnet18(pretrained: bool = False, **kwargs: Any) -> DuoResNet:
    """BinaryDuo ResNet-18 (coupled unless `decoupled=True`), ImageNet stem (224x224)."""
    return _create("binaryduo_resnet18", pretrained, **dict({"layers": (2, 2, 2, 2)}, **kwargs))


@register_model
def binaryduo_resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> DuoResNet:
    """BinaryDuo ResNet-18, CIFAR stem (32x32; INFERRED: the release's CIFAR model is a VGG with real weights)."""
    args = {"layers": (2, 2, 2, 2), "cifar_stem": True, "img_size": 32, "num_classes": 10}
    return _create("binaryduo_resnet18_cifar", pretrained, **dict(args, **kwargs))


BINARYDUO = MethodInfo("BinaryDuo", "Sign + Scale", "Kim, Kim, Kim, Kim, ICLR 2020, arXiv 2002.06517", pretraining=True)
describe_models(("binaryduo_resnet18", "binaryduo_resnet18_cifar"), BINARYDUO)
