"""BONN: Bi-Real-18 whose binary convs scale sign(k) by a learned reconstruction vector and carry a Bayesian kernel
loss; a Bayesian feature loss on the classifier's input.

Gu, Zhao, Jiang, Zhang, Han, Cao, Doermann, "Bayesian Optimized 1-Bit CNNs", ICCV 2019 (the poster's "Bi-Real
Net18" backbone; the book's caption says ResNet-18). Reported (ImageNet): 59.3/81.6, no pretraining, about 1.63e8 OPs.
No code is published.

- Weights: :class:`methods.binary.bayes.BayesWeight` (`scale_form`: "inv_mean_w", the spec's best reading, or
  "mean_w"); its mixture prior and reconstruction vector start from each kernel's statistics (Algorithm 5).
- Activations: sign with the clip straight-through estimator (UNVERIFIED).
- The losses are training settings: `train.bayes_kernel_loss` (lambda 1e-4), `train.bayes_kernel_prior` (nu) and
  `train.bayes_feature_loss` (theta 1e-3).
- Layout: the Bi-Real block (a real shortcut around every binary conv; downsampling AvgPool 2x2 -> real 1x1 conv ->
  BN). Real: stem conv, downsample shortcuts, BN, classifier.
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from methods.baselines._binary_resnet import BinaryResNet, BiRealBlock, ConvFactory, cfg, check_resnet_kwargs
from methods.binary import BinaryConv2d
from methods.binary.bayes import BayesWeight, ScaleForm
from methods.registry import MethodInfo, describe_models

__all__ = ["bonn_resnet18", "bonn_resnet18_cifar"]

# the keywords of this family (beyond BinaryResNet's)
_FAMILY_KWARGS = ("scale_form", "pad_value", "weight_binary")


def _bonn_conv(scale_form: ScaleForm, pad_value: float, weight_binary: bool) -> ConvFactory:
    def make(cin: int, cout: int, stride: int, out_size: tuple[int, int]) -> nn.Module:
        wq = BayesWeight(cout, scale_form) if weight_binary else None
        return BinaryConv2d(
            cin, cout, 3, stride, 1, input_quantizer="ste_sign", weight_quantizer=wq, pad_value=pad_value
        )

    return make


def _create_bonn(variant: str, pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    check_resnet_kwargs(variant, kwargs, _FAMILY_KWARGS)
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights")
    conv = _bonn_conv(
        kwargs.pop("scale_form", "inv_mean_w"), kwargs.pop("pad_value", 0.0), kwargs.pop("weight_binary", True)
    )
    model = build_model_with_cfg(BinaryResNet, variant, pretrained=False, block=BiRealBlock, conv=conv, **kwargs)
    for m in model.modules():  # after the network's conv init: the prior and w start from each kernel
        if isinstance(m, BinaryConv2d) and isinstance(m.weight_quantizer, BayesWeight):
            m.weight_quantizer.init_from_kernel(m.weight.detach())
    return model


default_cfgs = generate_default_cfgs(
    {
        "bonn_resnet18.untrained": cfg(cifar=False),
        "bonn_resnet18_cifar.untrained": cfg(cifar=True),
    }
)


@register_model
def bonn_resnet18(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """BONN on Bi-Real-18, ImageNet stem (224x224)."""
    return _create_bonn("bonn_resnet18", pretrained, **dict({"layers": (4, 4, 4, 4)}, **kwargs))


@register_model
def bonn_resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """BONN on Bi-Real-18, CIFAR stem (32x32; INFERRED: the paper's CIFAR networks are WRN-22)."""
    args = {"layers": (4, 4, 4, 4), "cifar_stem": True, "img_size": 32, "num_classes": 10}
    return _create_bonn("bonn_resnet18_cifar", pretrained, **dict(args, **kwargs))


BONN = MethodInfo("BONN", "Bayesian", "Gu et al., ICCV 2019")
describe_models(("bonn_resnet18", "bonn_resnet18_cifar"), BONN)
