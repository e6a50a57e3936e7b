"""ABC-Net ResNets: M binary weight bases and N shifted binary activation bases in every binary conv.

Lin, Zhao, Pan, "Towards Accurate Binary Convolutional Neural Network", NeurIPS 2017, arXiv 1711.11294. Reported
(ImageNet, (M, N) = (1, 1), the poster's rows): ResNet-18 42.7/67.6, ResNet-34 52.4/76.5; ResNet-18 (3, 3) 61.0/83.2
and (5, 5) 65.0/85.9 (as secondary sources quote them: UNVERIFIED).

The conv: methods/binary/abc.py (least-squares alpha refitted in every training forward, frozen at eval; trainable
shifts and betas). The network: the shared binary ResNet's basic block (conv -> BN -> Hardtanh, two binary 3x3 convs,
real 1x1 downsample + BN); the paper's block order (BN -> multi-binarize -> conv) is not known in detail here
(INFERRED: the same block as the XNOR-Net row). Real: stem conv, downsample shortcuts, BN, classifier. No official
code exists; there are no extra losses.

Keywords: `weight_bases` (M), `activation_bases` (N), `abc_scope` ("layer", one alpha per base per layer: the
survey's formula; or "channel", per output filter).
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from methods.baselines._binary_resnet import BinaryBasicBlock, BinaryResNet, ConvFactory, cfg, check_resnet_kwargs
from methods.binary.abc import ABCConv2d
from methods.registry import MethodInfo, describe_models

__all__ = ["abcnet_resnet18", "abcnet_resnet18_cifar", "abcnet_resnet34", "abcnet_resnet34_cifar"]

_FAMILY_KWARGS = ("weight_bases", "activation_bases", "abc_scope")


def abc_conv_factory(weight_bases: int, activation_bases: int, scope: str) -> ConvFactory:
    """3x3 ABCConv2d with M weight and N activation bases."""

    def make(cin: int, cout: int, stride: int, out_size: tuple[int, int]) -> nn.Module:
        return ABCConv2d(
            cin,
            cout,
            3,
            stride,
            1,
            weight_bases=weight_bases,
            activation_bases=activation_bases,
            scope=scope,  # type: ignore[arg-type]
        )

    return make


def _create(variant: str, pretrained: bool, **kwargs: Any) -> BinaryResNet:
    check_resnet_kwargs(variant, kwargs, _FAMILY_KWARGS)
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights")
    conv = abc_conv_factory(
        kwargs.pop("weight_bases", 1), kwargs.pop("activation_bases", 1), kwargs.pop("abc_scope", "layer")
    )
    return build_model_with_cfg(BinaryResNet, variant, pretrained=False, block=BinaryBasicBlock, conv=conv, **kwargs)


default_cfgs = generate_default_cfgs(
    {
        "abcnet_resnet18.untrained": cfg(cifar=False),
        "abcnet_resnet18_cifar.untrained": cfg(cifar=True),
        "abcnet_resnet34.untrained": cfg(cifar=False),
        "abcnet_resnet34_cifar.untrained": cfg(cifar=True),
    }
)

_CIFAR = {"cifar_stem": True, "img_size": 32, "num_classes": 10}


@register_model
def abcnet_resnet18(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """ABC-Net ResNet-18, ImageNet stem (224x224); (M, N) = (1, 1) unless set."""
    return _create("abcnet_resnet18", pretrained, **dict({"layers": (2, 2, 2, 2)}, **kwargs))


@register_model
def abcnet_resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """ABC-Net ResNet-18, CIFAR stem (32x32)."""
    return _create("abcnet_resnet18_cifar", pretrained, **dict({"layers": (2, 2, 2, 2), **_CIFAR}, **kwargs))


@register_model
def abcnet_resnet34(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """ABC-Net ResNet-34, ImageNet stem (224x224)."""
    return _create("abcnet_resnet34", pretrained, **dict({"layers": (3, 4, 6, 3)}, **kwargs))


@register_model
def abcnet_resnet34_cifar(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """ABC-Net ResNet-34, CIFAR stem (32x32)."""
    return _create("abcnet_resnet34_cifar", pretrained, **dict({"layers": (3, 4, 6, 3), **_CIFAR}, **kwargs))


ABCNET = MethodInfo("ABC-Net", "Sign + Scale", "Lin, Zhao, Pan, NeurIPS 2017, arXiv 1711.11294")
describe_models(("abcnet_resnet18", "abcnet_resnet18_cifar", "abcnet_resnet34", "abcnet_resnet34_cifar"), ABCNET)
