"""PCNN ResNets: ResNet-18 basic blocks whose 3x3 convs binarise their kernels by a learned projection.

Gu, Li, Zhang, Han, Cao, Liu, Doermann, "Projection Convolutional Neural Networks for 1-bit CNNs via Discrete Back
Propagation", AAAI 2019, arXiv 1811.12755. Reported ResNet-18 (ImageNet): 57.3/80.0, about 1.63e8 OPs.

- Weights: :class:`methods.binary.projection.ProjectionWeight` (C^ = a sign(mean(W) C), one learned k x k projection
  matrix per layer, J = 1), or its ternary projection with `weight_levels=3`: the progressive stage whose model
  initialises the binary one (`--init-from`, the same parameters).
- Activations: sign with the clip straight-through estimator 1[|x| <= 1] (UNVERIFIED: the book does not state PCNN's).
- The projection loss (lambda = 1e-4) and the projection matrices' own lr are training settings
  (`train.projection_loss`, `train.projection_lr_scale`).
- Layout INFERRED: no training code is published; the shared binary ResNet (conv -> BN -> Hardtanh), real stem,
  1x1 downsample shortcuts and classifier.

Binary: every 3x3 conv in the four stages. Real: stem conv, 1x1 downsample shortcuts, BN, classifier.
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
from methods.binary.projection import ProjectionWeight
from methods.registry import MethodInfo, describe_models

__all__ = ["pcnn_resnet18", "pcnn_resnet18_cifar"]

# the keywords of this family (beyond BinaryResNet's)
_FAMILY_KWARGS = ("weight_levels", "pad_value", "weight_binary")


def _create_pcnn(variant: str, pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    check_resnet_kwargs(variant, kwargs, _FAMILY_KWARGS)
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights")
    wq = partial(ProjectionWeight, 3, kwargs.pop("weight_levels", 2))
    conv = binary_conv_factory(
        "ste_sign", wq, pad_value=kwargs.pop("pad_value", 0.0), weight_binary=kwargs.pop("weight_binary", True)
    )
    return build_model_with_cfg(BinaryResNet, variant, pretrained=False, block=BinaryBasicBlock, conv=conv, **kwargs)


default_cfgs = generate_default_cfgs(
    {
        "pcnn_resnet18.untrained": cfg(cifar=False),
        "pcnn_resnet18_cifar.untrained": cfg(cifar=True),
    }
)


@register_model
def pcnn_resnet18(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """PCNN ResNet-18, ImageNet stem (224x224)."""
    return _create_pcnn("pcnn_resnet18", pretrained, **dict({"layers": (2, 2, 2, 2)}, **kwargs))


@register_model
def pcnn_resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """PCNN ResNet-18, CIFAR stem (32x32; INFERRED: the paper's CIFAR networks are WRN-22)."""
    args = {"layers": (2, 2, 2, 2), "cifar_stem": True, "img_size": 32, "num_classes": 10}
    return _create_pcnn("pcnn_resnet18_cifar", pretrained, **dict(args, **kwargs))


PCNN = MethodInfo("PCNN", "Projection", "Gu et al., AAAI 2019, arXiv 1811.12755", pretraining=True)
describe_models(("pcnn_resnet18", "pcnn_resnet18_cifar"), PCNN)
