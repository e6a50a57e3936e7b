"""Full-precision ResNet with a CIFAR stem: the reference network binary methods are compared against.

ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv 1512.03385) built from timm's
`ResNet`/`BasicBlock`; the CIFAR variant replaces the 7x7 stride-2 stem and max-pool by one 3x3 stride-1 conv, so a
32x32 input reaches the last stage at 4x4 (the usual CIFAR ResNet-18 of binary-network papers).
"""

from __future__ import annotations

from typing import Any, cast

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from methods.registry import MethodInfo, check_model_kwargs, constructor_kwargs, describe_models

__all__ = ["resnet18_cifar"]

CIFAR_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR_STD = (0.24703233, 0.24348505, 0.26158768)


def _cifar_stem(model: ResNet, in_chans: int) -> ResNet:
    """Swap timm's ImageNet stem for a 3x3 stride-1 conv and no max-pool (in place); returns the model."""
    width = cast(nn.Conv2d, model.conv1).out_channels
    conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
    model.conv1 = conv1  # type: ignore[assignment]  # timm types a deep stem as Sequential
    model.maxpool = nn.Identity()  # type: ignore[assignment]
    for info in model.feature_info:  # reductions shrink by the 4x the old stem took
        info["reduction"] = max(1, cast(int, info["reduction"]) // 4)
    return model


# timm's ResNet arguments (all of them: the entrypoint's `block`/`layers` are defaults a caller may override)
_RESNET_KWARGS = constructor_kwargs(ResNet)


def _create_resnet_cifar(variant: str, pretrained: bool = False, **kwargs: Any) -> ResNet:
    check_model_kwargs(variant, kwargs, _RESNET_KWARGS, features=True)
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights")
    in_chans = kwargs.get("in_chans", 3)
    model = build_model_with_cfg(ResNet, variant, pretrained=False, **kwargs)
    return _cifar_stem(model, in_chans)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (4, 4),
        "mean": CIFAR_MEAN,
        "std": CIFAR_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"resnet18_cifar.untrained": _cfg()})


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18 (full precision) with a CIFAR stem (3x3 stride-1 conv, no max-pool), 11.2M parameters."""
    kwargs.setdefault("num_classes", 10)
    model_args = {"block": BasicBlock, "layers": (2, 2, 2, 2)}
    model_args.update(kwargs)
    return _create_resnet_cifar("resnet18_cifar", pretrained, **model_args)


FULL_PRECISION = MethodInfo("Full precision", "none (FP32)", "He et al., CVPR 2016, arXiv 1512.03385")
describe_models(("resnet18", "resnet18_cifar"), FULL_PRECISION)
