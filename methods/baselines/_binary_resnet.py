"""The binary ResNet shared by the baseline families (BinaryNet, XNOR-Net, XNOR-Net++, Bi-Real Net).

Two block types, on timm's model surface (`forward_features`, `forward_head`, `get_classifier`, `reset_classifier`):

- `BinaryBasicBlock` (ResNet-18/34 basic block, two binary 3x3 convs):
  x -> [q_in -> BinConv -> BN -> act] -> [q_in -> BinConv -> BN] + shortcut(x) -> act,
  with `act` = Hardtanh (a ReLU before sign() would make every activation +1; the stem uses Hardtanh too).
- `BiRealBlock` (Bi-Real Net: a real identity shortcut around *every* binary conv):
  x -> BN(BinConv(q_in(x))) + shortcut(x).

What stays real (full precision): the stem conv, the classifier, BN, and the downsample shortcuts (1x1 conv + BN, with
a 2x2 average pool first in Bi-Real). `real_layers()` lists them; `bnas profile` audits them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from timm.layers import SelectAdaptivePool2d
from torch import nn

from methods.binary import BinaryConv2d, LearnedScale
from methods.registry import check_model_kwargs, constructor_kwargs

__all__ = ["ClassifierSurface", "BinaryResNet", "BinaryBasicBlock", "BiRealBlock", "ConvFactory", "check_resnet_kwargs"]

# (in_channels, out_channels, stride, out_size) -> a 3x3 conv
ConvFactory = Callable[[int, int, int, tuple[int, int]], nn.Module]


def binary_conv_factory(
    input_quantizer: str | None,
    weight_quantizer: str | Callable[[], nn.Module] | None,
    scale_shape: str | None = None,
    pad_value: float = 0.0,
    weight_clip: float | None = None,
    weight_binary: bool = True,
) -> ConvFactory:
    """A factory of 3x3 BinaryConv2d with the given quantizers (and XNOR-Net++ scale shape, if any).

    `weight_binary=False` keeps the weights real (stage 1 of the two-stage recipes: binary activations first).
    """
    wq_spec = weight_quantizer if weight_binary else None
    clip = weight_clip if weight_binary else None

    def make(cin: int, cout: int, stride: int, out_size: tuple[int, int]) -> nn.Module:
        wq = wq_spec() if callable(wq_spec) else wq_spec
        scale = LearnedScale(cout, scale_shape, out_size) if scale_shape else None  # type: ignore[arg-type]
        return BinaryConv2d(
            cin,
            cout,
            3,
            stride,
            1,
            bias=False,
            input_quantizer=input_quantizer,
            weight_quantizer=wq,
            scale=scale,
            pad_value=pad_value,
            weight_clip=clip,
        )

    return make


class BinaryBasicBlock(nn.Module):
    """ResNet basic block with two binary convs and a real downsample shortcut (1x1 conv + BN)."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int, out_size: tuple[int, int], conv: ConvFactory) -> None:
        super().__init__()
        self.conv1 = conv(cin, cout, stride, out_size)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = nn.Hardtanh(inplace=True)
        self.conv2 = conv(cout, cout, 1, out_size)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = nn.Hardtanh(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.downsample(x))


class BiRealBlock(nn.Module):
    """Bi-Real block: one binary conv with a real shortcut; downsampling = AvgPool 2x2 -> real 1x1 conv -> BN."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int, out_size: tuple[int, int], conv: ConvFactory) -> None:
        super().__init__()
        self.conv = conv(cin, cout, stride, out_size)
        self.bn = nn.BatchNorm2d(cout)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            pool = nn.AvgPool2d(2, stride) if stride != 1 else nn.Identity()
            self.downsample = nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.downsample(x)


def init_conv_bn(module: nn.Module) -> None:
    """He et al.'s init of every conv (fan_out, ReLU gain) and unit-scale, zero-shift BN in `module` (timm's ResNet).

    The fan-out is the conv's applied one, `out_channels x k x k`: for a plain conv that is Kaiming's `fan_out` of
    its weight (same values, same random stream); for CBCN's circulant conv, whose stored bank has a quarter of the
    applied output channels, it keeps the std of the expanded 4x conv it applies.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.out_channels * math.prod(m.kernel_size)
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ClassifierSurface(nn.Module):
    """timm's classifier surface for a binary network whose subclass sets `fc`, `global_pool`, `num_features`,
    `num_classes` and `drop_rate` and defines `forward_features`: the head, the classifier reset, and the list of
    the layers that stay real (`bnas profile` audits it)."""

    fc: nn.Module
    global_pool: nn.Module
    num_features: int
    num_classes: int
    drop_rate: float
    grad_checkpointing: bool

    def real_layers(self) -> list[str]:
        """Names of the conv/linear layers that stay full precision."""
        return [
            n
            for n, m in self.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))
            and not (isinstance(m, BinaryConv2d) and m.binary_input and m.binary_weight)
        ]

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class BinaryResNet(ClassifierSurface):
    """A ResNet whose stage convs are binary; stem, shortcuts and classifier stay real.

    Args:
        block: BinaryBasicBlock or BiRealBlock.
        layers: blocks per stage (ResNet-18 basic blocks: (2, 2, 2, 2); Bi-Real-18: (4, 4, 4, 4)).
        conv: factory of the binary 3x3 convs.
        cifar_stem: 3x3 stride-1 stem without max-pool (32x32 inputs) instead of 7x7/2 + max-pool (224x224).
        img_size: input resolution, used for resolution-tied scales (XNOR-Net++ "factorised"/"full").
        stem_act: the stem's activation, from its width (default: none for Bi-Real blocks, else Hardtanh).
    """

    def __init__(
        self,
        block: type[nn.Module],
        layers: tuple[int, ...],
        conv: ConvFactory,
        num_classes: int = 1000,
        in_chans: int = 3,
        cifar_stem: bool = False,
        img_size: int = 224,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        stem_act: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        w0 = widths[0]
        if cifar_stem:
            self.conv1 = nn.Conv2d(in_chans, w0, 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
            size = img_size
        else:
            self.conv1 = nn.Conv2d(in_chans, w0, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            size = img_size // 4
        self.bn1 = nn.BatchNorm2d(w0)
        # never a ReLU in front of sign(): sign(ReLU(x)) = +1 everywhere. Basic blocks use Hardtanh (their block
        # activation); Bi-Real's release has no activation after the stem BN.
        if stem_act is not None:
            self.act1: nn.Module = stem_act(w0)
        else:
            self.act1 = nn.Identity() if issubclass(block, BiRealBlock) else nn.Hardtanh(inplace=True)
        stages, cin = [], w0
        self.feature_info = []
        for i, (n, w) in enumerate(zip(layers, widths, strict=True)):
            stride = 1 if i == 0 else 2
            size = size // stride
            blocks = []
            for j in range(n):
                blocks.append(block(cin, w, stride if j == 0 else 1, (size, size), conv))
                cin = w
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": w, "reduction": (img_size // size), "module": f"layer{i + 1}"})
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = self.head_hidden_size = cin
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        init_conv_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
        return x


# the BinaryResNet arguments a binary baseline takes (`block` and `conv` are set by its family)
_RESNET_KWARGS = constructor_kwargs(BinaryResNet, exclude=("block", "conv", "stem_act"))


def check_resnet_kwargs(variant: str, kwargs: dict[str, Any], family: Iterable[str]) -> None:
    """Refuse a keyword that is neither a BinaryResNet argument, one of the family's (`family`) nor timm's plumbing.

    Raises:
        ModelKwargError: names the model and the keyword (a TypeError).
    """
    check_model_kwargs(variant, kwargs, _RESNET_KWARGS | set(family), features=True)


def cfg(cifar: bool, **kwargs: Any) -> dict[str, Any]:
    """timm pretrained_cfg for a binary ResNet (no weights are published by this project)."""
    if cifar:
        base = {
            "num_classes": 10,
            "input_size": (3, 32, 32),
            "pool_size": (4, 4),
            "mean": (0.49139968, 0.48215827, 0.44653124),
            "std": (0.24703233, 0.24348505, 0.26158768),
        }
    else:
        base = {
            "num_classes": 1000,
            "input_size": (3, 224, 224),
            "pool_size": (7, 7),
            "crop_pct": 0.875,
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
        }
    return {**base, "first_conv": "conv1", "classifier": "fc", **kwargs}
