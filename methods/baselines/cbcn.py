"""CBCN: Bi-Real-18 with circulant binary convolutions (4 orientations, 4x the channels) and a 256-channel real stem.

Liu, Ding, Xia, Zhang, Zhuang, Zhang, Ji, Doermann, "Circulant Binary Convolutional Networks: Enhancing the
Performance of 1-bit DCNNs with Circulant Back Propagation", CVPR 2019, arXiv 1910.10853. Reported (ImageNet,
"Bi-Real-18" backbone): 61.4/82.8 with the center-loss fine-tune, 61.0 without (the release's README).

As the official release (liuchunlei0430/CBCN_Pytorch) builds it, with channel multiplier 4 everywhere:
- stem: real conv 7x7/2, 3 -> 256, BN, PReLU, max-pool;
- Bi-Real layout, (4, 4, 4, 4) blocks of one circulant binary 3x3 conv (methods/binary/circulant.py) at
  64/128/256/512 planes = 256/512/1024/2048 channels: y = PReLU(BN(CBConv(sign(x))) + shortcut(x));
- downsample shortcut: real 1x1 conv (stride 1, at the input resolution) -> BN -> AvgPool 2x2 (`shortcut_order=
  "conv_bn_pool"`, the release's; "pool_conv_bn" is Bi-Real's order, 4x cheaper);
- head: global average pool -> real FC(2048).

Two costs, labelled: the released network's own count under the default policy (about 26.8e9 BOPs + 17.1e8 FLOPs =
21.3e8 OPs), and the poster's 6.56e8, which is exactly 4 x Bi-Real-18's (linear in the multiplier, not the 16x BOPs
of a 4x-wide binary conv). The optional center-loss fine-tune is not implemented.

Keywords: `alpha_grad` and `weight_ste` (the weight quantizer's, release defaults), `shortcut_order`.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from methods.baselines._binary_resnet import BinaryResNet, BiRealBlock, ConvFactory, cfg, check_resnet_kwargs
from methods.binary.circulant import ORIENTATIONS, CirculantBinaryConv2d, LayerScaleApproxSign
from methods.registry import MethodInfo, describe_models

__all__ = ["CBCNBlock", "cbcn_resnet18", "cbcn_resnet18_cifar"]

CBCN_WIDTHS = tuple(ORIENTATIONS * w for w in (64, 128, 256, 512))
SHORTCUT_ORDERS = ("conv_bn_pool", "pool_conv_bn")


def circulant_conv_factory(alpha_grad: bool = True, weight_ste: str = "approx_sign") -> ConvFactory:
    """3x3 CirculantBinaryConv2d between the planes of `cin` and `cout` channels (4 orientations each)."""

    def make(cin: int, cout: int, stride: int, out_size: tuple[int, int]) -> nn.Module:
        wq = LayerScaleApproxSign(alpha_grad, weight_ste)  # type: ignore[arg-type]
        return CirculantBinaryConv2d(cin // ORIENTATIONS, cout // ORIENTATIONS, 3, stride, 1, weight_quantizer=wq)

    return make


def _block(order: str) -> type[nn.Module]:
    class Block(CBCNBlock):
        shortcut_order = order

    return Block


class CBCNBlock(BiRealBlock):
    """Bi-Real's block with a PReLU after the add and the release's downsample order (conv -> BN -> pool)."""

    shortcut_order = "conv_bn_pool"

    def __init__(self, cin: int, cout: int, stride: int, out_size: tuple[int, int], conv: ConvFactory) -> None:
        super().__init__(cin, cout, stride, out_size, conv)
        if (stride != 1 or cin != cout) and self.shortcut_order == "conv_bn_pool":
            pool = nn.AvgPool2d(2, stride) if stride != 1 else nn.Identity()
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), pool)
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


_FAMILY_KWARGS = ("alpha_grad", "weight_ste", "shortcut_order")


def _create(variant: str, pretrained: bool, **kwargs: Any) -> BinaryResNet:
    check_resnet_kwargs(variant, kwargs, _FAMILY_KWARGS)
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights")
    order = kwargs.pop("shortcut_order", "conv_bn_pool")
    if order not in SHORTCUT_ORDERS:
        raise ValueError(f"{variant}: shortcut_order must be one of {', '.join(SHORTCUT_ORDERS)}, got {order!r}")
    if any(w % ORIENTATIONS for w in kwargs.get("widths", CBCN_WIDTHS)):
        raise ValueError(f"{variant}: widths must be multiples of {ORIENTATIONS} (planes x orientations)")
    conv = circulant_conv_factory(kwargs.pop("alpha_grad", True), kwargs.pop("weight_ste", "approx_sign"))
    return build_model_with_cfg(
        BinaryResNet, variant, pretrained=False, block=_block(order), conv=conv, stem_act=nn.PReLU, **kwargs
    )


default_cfgs = generate_default_cfgs(
    {"cbcn_resnet18.untrained": cfg(cifar=False), "cbcn_resnet18_cifar.untrained": cfg(cifar=True)}
)


@register_model
def cbcn_resnet18(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """CBCN on Bi-Real-18, ImageNet stem (224x224), channels 256/512/1024/2048."""
    return _create("cbcn_resnet18", pretrained, **dict({"layers": (4, 4, 4, 4), "widths": CBCN_WIDTHS}, **kwargs))


@register_model
def cbcn_resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """CBCN on Bi-Real-18, CIFAR stem (32x32; INFERRED: the paper's CIFAR models are WRNs)."""
    args = {"layers": (4, 4, 4, 4), "widths": CBCN_WIDTHS, "cifar_stem": True, "img_size": 32, "num_classes": 10}
    return _create("cbcn_resnet18_cifar", pretrained, **dict(args, **kwargs))


CBCN = MethodInfo("CBCN", "Sign + Scale", "Liu et al., CVPR 2019, arXiv 1910.10853", pretraining=True)
describe_models(("cbcn_resnet18", "cbcn_resnet18_cifar"), CBCN)
