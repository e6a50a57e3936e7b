"""XNOR-Net++ ResNets: binary activations and weights, one learned output scale Gamma per conv.

Bulat & Tzimiropoulos, "XNOR-Net++: Improved Binary Neural Networks", BMVC 2019, arXiv 1909.13863. Reported
ResNet-18 (ImageNet): 57.1/79.9.

Y = (sign(X) * sign(W)) . Gamma, Gamma learned by backprop, in the shape given by `scale_shape`: "channel"
(C_out; default), "factorised" (alpha (x) beta (x) gamma over C_out x H_out x W_out) or "full" (C_out x H_out x W_out).
The spatial shapes tie the model to its input size (`img_size`). Binary: every 3x3 conv in the four stages
(ste_sign on inputs and weights). Real: stem conv, 1x1 downsample shortcuts, BN, Gamma, classifier.
With the conv -> BN block order, a "channel" Gamma is absorbed by the following training-mode BN (it only changes
gradients); the spatial shapes ("factorised", "full") change the forward function.
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

__all__ = ["xnornetpp_resnet18", "xnornetpp_resnet18_cifar"]


# the keywords of this family (beyond BinaryResNet's)
_FAMILY_KWARGS = ("scale_shape", "pad_value", "weight_binary")


def _create_xnornet_pp(variant: str, pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    check_resnet_kwargs(variant, kwargs, _FAMILY_KWARGS)
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights")
    conv = binary_conv_factory(
        "ste_sign",
        "ste_sign",
        scale_shape=kwargs.pop("scale_shape", "channel"),
        pad_value=kwargs.pop("pad_value", 0.0),
        weight_binary=kwargs.pop("weight_binary", True),
    )
    return build_model_with_cfg(BinaryResNet, variant, pretrained=False, block=BinaryBasicBlock, conv=conv, **kwargs)


default_cfgs = generate_default_cfgs(
    {
        "xnornetpp_resnet18.untrained": cfg(cifar=False),
        "xnornetpp_resnet18_cifar.untrained": cfg(cifar=True),
    }
)


@register_model
def xnornetpp_resnet18(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """XNOR-Net++ ResNet-18, ImageNet stem (224x224); `scale_shape` selects Gamma's shape."""
    return _create_xnornet_pp("xnornetpp_resnet18", pretrained, **dict({"layers": (2, 2, 2, 2)}, **kwargs))


@register_model
def xnornetpp_resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """XNOR-Net++ ResNet-18, CIFAR stem (32x32); `scale_shape` selects Gamma's shape."""
    args = {"layers": (2, 2, 2, 2), "cifar_stem": True, "img_size": 32, "num_classes": 10}
    return _create_xnornet_pp("xnornetpp_resnet18_cifar", pretrained, **dict(args, **kwargs))


XNORNETPP = MethodInfo("XNOR-Net++", "Sign + Scale*", "Bulat, Tzimiropoulos, BMVC 2019, arXiv 1909.13863")
describe_models(("xnornetpp_resnet18", "xnornetpp_resnet18_cifar"), XNORNETPP)
