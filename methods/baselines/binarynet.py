"""BinaryNet (BNN) ResNets: sign() on activations and weights, no scaling factors.

Courbariaux, Hubara et al., "Binarized Neural Networks: Training Neural Networks with Weights and Activations
Constrained to +1 or -1", NeurIPS 2016, arXiv 1602.02830. The ResNet-18 form is the one quoted by the Bi-Real and
ABC-Net tables (42.2/67.1 on ImageNet).

Binary: every 3x3 conv in the four stages (input: ste_sign; weight: ste_sign, hard-tanh STE, latent weights clipped
to [-1, 1] after each step by the engine's weight-constraint hook). Real: stem conv, 1x1 downsample shortcuts, BN,
classifier.
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from methods.baselines._binary_resnet import (
    BinaryBasicBlock,
    BinaryResNet,
    binary_conv_factory,
    cfg,
    check_resnet_kwargs,
)
from methods.registry import MethodInfo, describe_models

__all__ = ["binarynet_resnet18", "binarynet_resnet18_cifar"]


# the keywords of this family (beyond BinaryResNet's)
_FAMILY_KWARGS = ("pad_value", "weight_binary")


def _create_binarynet(variant: str, pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    check_resnet_kwargs(variant, kwargs, _FAMILY_KWARGS)
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights")
    conv = binary_conv_factory(
        "ste_sign",
        "ste_sign",
        pad_value=kwargs.pop("pad_value", 0.0),
        weight_binary=kwargs.pop("weight_binary", True),
        weight_clip=1.0,
    )
    return build_model_with_cfg(BinaryResNet, variant, pretrained=False, block=BinaryBasicBlock, conv=conv, **kwargs)


default_cfgs = generate_default_cfgs(
    {
        "binarynet_resnet18.untrained": cfg(cifar=False),
        "binarynet_resnet18_cifar.untrained": cfg(cifar=True),
    }
)


@register_model
def binarynet_resnet18(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """BinaryNet ResNet-18, ImageNet stem (224x224)."""
    return _create_binarynet("binarynet_resnet18", pretrained, **dict({"layers": (2, 2, 2, 2)}, **kwargs))


@register_model
def binarynet_resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """BinaryNet ResNet-18, CIFAR stem (32x32)."""
    args = {"layers": (2, 2, 2, 2), "cifar_stem": True, "img_size": 32, "num_classes": 10}
    return _create_binarynet("binarynet_resnet18_cifar", pretrained, **dict(args, **kwargs))


BINARYNET = MethodInfo("BinaryNet", "Sign", "Courbariaux, Hubara et al., NeurIPS 2016, arXiv 1602.02830")
describe_models(("binarynet_resnet18", "binarynet_resnet18_cifar"), BINARYNET)
