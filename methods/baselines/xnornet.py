"""XNOR-Net ResNets: binary activations, analytic per-filter weight scales alpha = mean|W|, no input scale.

Rastegari, Ordonez, Redmon, Farhadi, "XNOR-Net: ImageNet Classification Using Binary Convolutional Neural Networks",
ECCV 2016, arXiv 1603.05279. Reported ResNet-18 (ImageNet): 51.2/73.2, 1.67e8 OPs.

Simplification taken: the input scale (XNOR-Net's K = A * k box-filtered mean |I| map) is dropped, as larq zoo does;
the authors report it costs < 1% top-1 (allenai/XNOR-Net#4), and it would add C_out*H_out*W_out real multiplies per
layer that no published OPs figure counts. Weights: XnorWeight (alpha * sign(W), per output filter), with the exact
gradient of alpha*sign(W) by default; `xnor_grad="xnor_rescale"` selects the XNOR-Net-PyTorch/BNAS rescale and
`xnor_center=True`/`xnor_clamp=True` the in-place centring/clamping of the latent weights.

Binary: every 3x3 conv in the four stages. Real: stem conv, 1x1 downsample shortcuts, BN, classifier.

Note: the block order is the shared binary ResNet's conv -> BN. A per-output-channel scale right before a training-mode
BN is absorbed by it, so alpha changes the gradients (and eval-time BN statistics) but not the training forward
function; the paper's BN -> sign -> conv order, where alpha survives, is not implemented yet.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from methods.baselines._binary_resnet import (
    BinaryBasicBlock,
    BinaryResNet,
    binary_conv_factory,
    cfg,
    check_resnet_kwargs,
)
from methods.binary import XnorWeight
from methods.registry import MethodInfo, describe_models

__all__ = ["xnornet_resnet18", "xnornet_resnet18_cifar"]


# the keywords of this family (beyond BinaryResNet's)
_FAMILY_KWARGS = ("xnor_center", "xnor_clamp", "xnor_grad", "pad_value", "weight_binary")


def _create_xnornet(variant: str, pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    check_resnet_kwargs(variant, kwargs, _FAMILY_KWARGS)
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights")
    wq = partial(
        XnorWeight,
        center=kwargs.pop("xnor_center", False),
        clamp=kwargs.pop("xnor_clamp", False),
        grad=kwargs.pop("xnor_grad", "exact"),
    )
    conv = binary_conv_factory(
        "ste_sign", wq, pad_value=kwargs.pop("pad_value", 0.0), weight_binary=kwargs.pop("weight_binary", True)
    )
    return build_model_with_cfg(BinaryResNet, variant, pretrained=False, block=BinaryBasicBlock, conv=conv, **kwargs)


default_cfgs = generate_default_cfgs(
    {
        "xnornet_resnet18.untrained": cfg(cifar=False),
        "xnornet_resnet18_cifar.untrained": cfg(cifar=True),
    }
)


@register_model
def xnornet_resnet18(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """XNOR-Net ResNet-18, ImageNet stem (224x224)."""
    return _create_xnornet("xnornet_resnet18", pretrained, **dict({"layers": (2, 2, 2, 2)}, **kwargs))


@register_model
def xnornet_resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """XNOR-Net ResNet-18, CIFAR stem (32x32)."""
    args = {"layers": (2, 2, 2, 2), "cifar_stem": True, "img_size": 32, "num_classes": 10}
    return _create_xnornet("xnornet_resnet18_cifar", pretrained, **dict(args, **kwargs))


XNORNET = MethodInfo("XNOR-Net", "Sign + Scale", "Rastegari et al., ECCV 2016, arXiv 1603.05279")
describe_models(("xnornet_resnet18", "xnornet_resnet18_cifar"), XNORNET)
