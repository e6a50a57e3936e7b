"""Bi-Real Net: a real identity shortcut around every binary conv, ApproxSign, magnitude-aware weights.

Liu, Wu, Luo, Yang, Liu, Cheng, "Bi-Real Net: Enhancing the Performance of 1-bit CNNs with Improved
Representational Capability and Advanced Training Algorithm", ECCV 2018, arXiv 1808.00278. Reported (ImageNet):
Bi-Real-18 56.4/79.5 at 1.63e8 OPs; Bi-Real-34 62.2/83.9 at 1.93e8 OPs.

Block: x_{l+1} = BN(BinConv(ApproxSign(x_l))) + x_l; 18 layers = 4 stages x 4 blocks, 34 layers = (6, 8, 12, 6).
Downsampling (first block of stages 2-4): binary 3x3 stride-2 conv; shortcut AvgPool 2x2 -> real 1x1 conv -> BN
(the PyTorch release). Weights: MagnitudeAwareSign (`weight_grad="release"` or `"paper"`). Real: stem conv,
downsample shortcuts, BN, classifier.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from methods.baselines._binary_resnet import BinaryResNet, BiRealBlock, binary_conv_factory, cfg, check_resnet_kwargs
from methods.binary import MagnitudeAwareSign
from methods.registry import MethodInfo, describe_models

__all__ = ["bireal_resnet18", "bireal_resnet18_cifar", "bireal_resnet34", "bireal_resnet34_cifar"]


# the keywords of this family (beyond BinaryResNet's)
_FAMILY_KWARGS = ("weight_grad", "pad_value", "weight_binary")


def _create_birealnet(variant: str, pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    check_resnet_kwargs(variant, kwargs, _FAMILY_KWARGS)
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights")
    wq = partial(MagnitudeAwareSign, variant=kwargs.pop("weight_grad", "release"))
    conv = binary_conv_factory(
        "approx_sign", wq, pad_value=kwargs.pop("pad_value", 0.0), weight_binary=kwargs.pop("weight_binary", True)
    )
    return build_model_with_cfg(BinaryResNet, variant, pretrained=False, block=BiRealBlock, conv=conv, **kwargs)


default_cfgs = generate_default_cfgs(
    {
        "bireal_resnet18.untrained": cfg(cifar=False),
        "bireal_resnet18_cifar.untrained": cfg(cifar=True),
        "bireal_resnet34.untrained": cfg(cifar=False),
        "bireal_resnet34_cifar.untrained": cfg(cifar=True),
    }
)

_CIFAR = {"cifar_stem": True, "img_size": 32, "num_classes": 10}


@register_model
def bireal_resnet18(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """Bi-Real Net 18, ImageNet stem (224x224)."""
    return _create_birealnet("bireal_resnet18", pretrained, **dict({"layers": (4, 4, 4, 4)}, **kwargs))


@register_model
def bireal_resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """Bi-Real Net 18, CIFAR stem (32x32)."""
    return _create_birealnet("bireal_resnet18_cifar", pretrained, **dict({"layers": (4, 4, 4, 4), **_CIFAR}, **kwargs))


@register_model
def bireal_resnet34(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """Bi-Real Net 34, ImageNet stem (224x224)."""
    return _create_birealnet("bireal_resnet34", pretrained, **dict({"layers": (6, 8, 12, 6)}, **kwargs))


@register_model
def bireal_resnet34_cifar(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """Bi-Real Net 34, CIFAR stem (32x32)."""
    return _create_birealnet("bireal_resnet34_cifar", pretrained, **dict({"layers": (6, 8, 12, 6), **_CIFAR}, **kwargs))


BIREAL = MethodInfo("Bi-Real", "Sign + Scale", "Liu et al., ECCV 2018, arXiv 1808.00278")
describe_models(("bireal_resnet18", "bireal_resnet18_cifar", "bireal_resnet34", "bireal_resnet34_cifar"), BIREAL)
