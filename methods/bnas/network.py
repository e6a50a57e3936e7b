"""The discrete BNAS networks built from a genotype with the cell template T_B (docs/bnas.md §3, §5), as timm models.

Kim, Singh, Choi, "Learning Architectures for Binary Networks", ECCV 2020, arXiv 2002.06963.

Cell T_B: the DARTS cell (inputs c_{k-2}, c_{k-1}; 4 nodes, each the sum of two chosen ops; output = concat of the
4 nodes, 4C channels) plus a skip from c_{k-1}: identity in normal cells, BN + 2x2 stride-2 conv (with bias, full
precision) in reduction cells; the first cell has none. `skip=False` removes it (the "No Skip" ablation).

Zeroise contributes zeros: nodes skip it instead of adding a zero tensor, and a preprocessing conv whose output only
feeds Zeroise is not run (its output is unused, so the network's output is unchanged).

Real (full precision): stem convs, the reduction cells' residual 2x2 convs, the classifier. Binary: every cell conv
(preprocessing and ops) with XNOR weights (centred, clamped, alpha*sign, BNAS gradient rescale) on sign() inputs.

Genotypes may use the ops of any search space (:data:`methods.bnas.genotypes.SPACES`): S_B's, or the binarised DARTS
space's (separable and dilated separable convs, whose depthwise convs are binary too; skip_connect, a real identity
at stride 1 and a binary factorized reduction at stride 2). As in DARTS (Liu et al., ICLR 2019), drop-path is not
applied to identity ops.

Release switches (docs/bnas.md §8): `official_fp_tail=True` leaves the last two cell convs with FP weights (the BinOp
index bug at HEAD, §8.1; their inputs stay binary); `official_binary_res_weights=True` binarises the residual convs'
weights (their input stays real), as the first release did (§8.2) — the convention the published BNAS FLOPs assume.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from timm.layers import SelectAdaptivePool2d, drop_path
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from methods.binary import BinaryConv2d
from methods.binary.int8_conv import is_channels_last
from methods.bnas.genotypes import Genotype, genotype_from_json, get_genotype
from methods.bnas.operations import BinConvBlock, build_op, xnor_weight_quantizer
from methods.registry import MethodInfo, check_model_kwargs, constructor_kwargs, describe_models

__all__ = ["BnasCell", "BnasNetwork", "bnas_a", "bnas_b", "bnas_c", "bnas_d", "bnas_e", "bnas_f", "bnas_g", "bnas_h"]


class BnasCell(nn.Module):
    """One discrete cell of template T_B."""

    def __init__(
        self,
        genotype: Genotype,
        c_pp: int,
        c_p: int,
        c: int,
        reduction: bool,
        reduction_prev: bool,
        first: bool,
        skip: bool = True,
        reduce_pre_affine: bool = False,
        official_binary_res_weights: bool = False,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        if reduction_prev:  # a 3x3 stride-2 binary conv where DARTS has FactorizedReduce
            self.preprocess0 = BinConvBlock(c_pp, c, 3, 2, 1, affine=reduce_pre_affine)
        else:
            self.preprocess0 = BinConvBlock(c_pp, c, 1, 1, 0)
        self.preprocess1 = BinConvBlock(c_p, c, 1, 1, 0)
        ops, concat = (
            (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal, genotype.normal_concat)
        )
        self.op_names = [name for name, _ in ops]
        self.indices = [j for _, j in ops]
        self.concat = list(concat)
        self.ops = nn.ModuleList(build_op(name, c, 2 if reduction and j < 2 else 1, True) for name, j in ops)
        self.c = c
        self.has_skip = skip and not first
        self.preprocess_res: nn.Module | None = None
        if self.has_skip and reduction:
            res = (
                BinaryConv2d(c_p, 4 * c, 2, 2, bias=True, weight_quantizer=xnor_weight_quantizer())
                if official_binary_res_weights
                else nn.Conv2d(c_p, 4 * c, 2, 2, bias=True)
            )
            self.preprocess_res = nn.Sequential(nn.BatchNorm2d(c_p), res)
        # which states are read by a non-Zeroise op (dead preprocessing is skipped)
        self._used = {j for name, j in ops if name != "none"}

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states: list[torch.Tensor | None] = [
            self.preprocess0(s0) if 0 in self._used else None,
            self.preprocess1(s1) if 1 in self._used else None,
        ]
        n, dev, dtype = s1.shape[0], s1.device, s1.dtype
        h_out = (s1.shape[2] + 1) // 2 if self.reduction else s1.shape[2]
        w_out = (s1.shape[3] + 1) // 2 if self.reduction else s1.shape[3]
        for i in range(len(self.ops) // 2):
            acc: torch.Tensor | None = None
            for k in (2 * i, 2 * i + 1):
                j = self.indices[k]
                if self.op_names[k] == "none" or states[j] is None:  # Zeroise, or an all-zero node
                    continue
                h = self.ops[k](states[j])
                if self.training and drop_prob > 0 and not isinstance(self.ops[k], nn.Identity):
                    h = drop_path(h, drop_prob, True)
                acc = h if acc is None else acc + h
            states.append(acc)
        zeros = None
        outs = []
        for j in self.concat:
            if states[j] is None:
                if zeros is None:
                    fmt = torch.channels_last if is_channels_last(s1) else torch.contiguous_format
                    zeros = torch.empty(n, self.c, h_out, w_out, device=dev, dtype=dtype, memory_format=fmt).zero_()
                outs.append(zeros)
            else:
                outs.append(cast(torch.Tensor, states[j]))
        out = torch.cat(outs, dim=1)
        if not self.has_skip:
            return out
        return out + (self.preprocess_res(s1) if self.preprocess_res is not None else s1)


def _resolve_genotype(genotype: Genotype | str) -> Genotype:
    if isinstance(genotype, Genotype):
        return genotype.validate()
    if genotype.endswith(".json") or genotype.lstrip().startswith("{"):
        return genotype_from_json(genotype)
    return get_genotype(genotype)


class BnasNetwork(nn.Module):
    """A BNAS network: stem, `layers` cells (reductions at layers//3 and 2*layers//3), global pool, classifier.

    Args:
        genotype: a Genotype, a published name ("latest_cell_zeroise", "latest_cell") or a genotype.json path.
        init_channels: C of the first cells (doubles at each reduction).
        layers: number of cells.
        imagenet: ImageNet stems (three stride-2 FP convs, 224 -> 28) instead of the CIFAR stem.
        skip: keep the T_B skip connections (False: the "No Skip" ablation).
        weight_binary: False keeps every cell conv's weights real, its inputs still binary (stage 1 of a multi-stage
            recipe: binary activations first; the next stage initialises the binary network from it).
    """

    def __init__(
        self,
        genotype: Genotype | str,
        init_channels: int = 36,
        layers: int = 20,
        num_classes: int = 10,
        imagenet: bool = False,
        skip: bool = True,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        official_binary_res_weights: bool = False,
        official_fp_tail: bool = False,
        weight_binary: bool = True,
    ) -> None:
        super().__init__()
        g = _resolve_genotype(genotype)
        self.genotype = g
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.drop_path_prob = 0.0  # set per epoch by the training engine's drop-path schedule
        c = init_channels
        if imagenet:
            self.stem0 = nn.Sequential(
                nn.Conv2d(in_chans, c // 2, 3, 2, 1, bias=False),
                nn.BatchNorm2d(c // 2),
                nn.ReLU(inplace=True),
                nn.Conv2d(c // 2, c, 3, 2, 1, bias=False),
                nn.BatchNorm2d(c),
            )
            self.stem1 = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c))
            c_pp, c_p, c_curr, reduction_prev = c, c, c, True
        else:
            c_curr = 3 * c
            self.stem = nn.Sequential(
                nn.BatchNorm2d(in_chans), nn.Conv2d(in_chans, c_curr, 3, 1, 1, bias=False), nn.ReLU(inplace=True)
            )
            c_pp, c_p, c_curr, reduction_prev = c_curr, c_curr, c, False
        self.imagenet = imagenet
        cells = []
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_curr *= 2
            cells.append(
                BnasCell(
                    g,
                    c_pp,
                    c_p,
                    c_curr,
                    reduction,
                    reduction_prev,
                    first=i == 0,
                    skip=skip,
                    reduce_pre_affine=imagenet,
                    official_binary_res_weights=official_binary_res_weights,
                )
            )
            reduction_prev = reduction
            c_pp, c_p = c_p, 4 * c_curr
        self.cells = nn.ModuleList(cells)
        if official_fp_tail:  # the release's BinOp index bug: the last (number of res convs) convs keep FP weights
            n_res = sum(c.preprocess_res is not None for c in cells)
            cell_convs = [m for m in self.cells.modules() if isinstance(m, BinaryConv2d) and m.binary_input]
            for m in cell_convs[len(cell_convs) - n_res :]:
                m.weight_quantizer = None
        if not weight_binary:  # real weights behind the binary inputs (the weights then train without XNOR's prep)
            for conv in [x for x in self.cells.modules() if isinstance(x, BinaryConv2d)]:
                conv.weight_quantizer = None
        self.num_features = self.head_hidden_size = c_p
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.classifier = nn.Linear(c_p, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            # channels_last on CPU: the int8 convs work in it and oneDNN's conv backward runs 1.3-2x faster in it
            # than in NCHW at C = 36 or 4C (no padding of the channels to 16); every activation and gradient stays
            # in it (the zero nodes too), so no layout copies (BNAS-A training step 3.1 -> 2.4 s, batch 64)
            x = x.contiguous(memory_format=torch.channels_last)
        if self.imagenet:
            s0 = self.stem0(x)
            s1 = self.stem1(s0)
        else:
            s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
        return s1

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# every keyword a BNAS model takes: BnasNetwork's arguments (no feature extraction: it has no `feature_info`)
_BNAS_KWARGS = constructor_kwargs(BnasNetwork)


def _create_bnas(variant: str, pretrained: bool = False, **kwargs: Any) -> BnasNetwork:
    check_model_kwargs(variant, kwargs, _BNAS_KWARGS)
    if pretrained:
        raise ValueError(
            f"{variant}: pretrained=True: no weights ship with this project. Download the official release's "
            f"checkpoint (the links in the README of github.com/gistvision/bnas), convert it with "
            f"`bnas import-checkpoint FILE --model {variant} --out DIR`, and use DIR/model.pt (train.init_from, or "
            f"`bnas evaluate --run DIR`)"
        )
    return build_model_with_cfg(BnasNetwork, variant, pretrained=False, **kwargs)


def _cfg(imagenet: bool) -> dict[str, Any]:
    if imagenet:
        return {
            "num_classes": 1000,
            "input_size": (3, 224, 224),
            "pool_size": (7, 7),
            "crop_pct": 0.875,
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
            "first_conv": "stem0.0",
            "classifier": "classifier",
        }
    return {
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "mean": (0.49139968, 0.48215827, 0.44653124),
        "std": (0.24703233, 0.24348505, 0.26158768),
        "first_conv": "stem.1",
        "classifier": "classifier",
    }


default_cfgs = generate_default_cfgs(
    {
        "bnas_a.untrained": _cfg(False),
        "bnas_b.untrained": _cfg(False),
        "bnas_c.untrained": _cfg(False),
        **{f"bnas_{v}.untrained": _cfg(True) for v in "defgh"},
    }
)

# (layers, init_channels) of the release's train_imagenet.py `configs` (docs/bnas.md §5.2)
_IMAGENET_CONFIGS = {"d": (12, 64), "e": (12, 68), "f": (15, 68), "g": (11, 74), "h": (16, 128)}


def _imagenet(v: str, pretrained: bool, kwargs: dict[str, Any]) -> BnasNetwork:
    layers, c = _IMAGENET_CONFIGS[v]
    args = {"genotype": "latest_cell", "layers": layers, "init_channels": c, "imagenet": True, "num_classes": 1000}
    return _create_bnas(f"bnas_{v}", pretrained, **dict(args, **kwargs))


@register_model
def bnas_a(pretrained: bool = False, **kwargs: Any) -> BnasNetwork:
    """BNAS-A (CIFAR-10): cell latest_cell_zeroise, 20 cells, C = 36 (release log: 5,578,252 params)."""
    args = {"genotype": "latest_cell_zeroise", "layers": 20, "init_channels": 36, "num_classes": 10}
    return _create_bnas("bnas_a", pretrained, **dict(args, **kwargs))


# BNAS-B and BNAS-C (the CIFAR ablation table's other rows): their sizes are unpublished, so both are INFERRED, the
# same cell as BNAS-A (the release ships only A, "as training other configurations for CIFAR10 does not take much
# time"). C: 16 cells, C = 108, 42,360,532 params, the closer of the two (layers, channels) candidates for the 42.4M
# that the EBNAS README quotes for BNAS-C (the other: 23 cells, C = 94, 42.70M). B: no count is quoted; A's 20 cells
# at C = 60, 15,450,196 params, near the geometric mean of A's and C's sizes (15.37M).
@register_model
def bnas_b(pretrained: bool = False, **kwargs: Any) -> BnasNetwork:
    """BNAS-B (CIFAR-10), INFERRED size: cell latest_cell_zeroise, 20 cells, C = 60 (15,450,196 params)."""
    args = {"genotype": "latest_cell_zeroise", "layers": 20, "init_channels": 60, "num_classes": 10}
    return _create_bnas("bnas_b", pretrained, **dict(args, **kwargs))


@register_model
def bnas_c(pretrained: bool = False, **kwargs: Any) -> BnasNetwork:
    """BNAS-C (CIFAR-10), INFERRED size: cell latest_cell_zeroise, 16 cells, C = 108 (42,360,532 params)."""
    args = {"genotype": "latest_cell_zeroise", "layers": 16, "init_channels": 108, "num_classes": 10}
    return _create_bnas("bnas_c", pretrained, **dict(args, **kwargs))


@register_model
def bnas_d(pretrained: bool = False, **kwargs: Any) -> BnasNetwork:
    """BNAS-D (ImageNet): cell latest_cell, 12 cells, C = 64."""
    return _imagenet("d", pretrained, kwargs)


@register_model
def bnas_e(pretrained: bool = False, **kwargs: Any) -> BnasNetwork:
    """BNAS-E (ImageNet): cell latest_cell, 12 cells, C = 68."""
    return _imagenet("e", pretrained, kwargs)


@register_model
def bnas_f(pretrained: bool = False, **kwargs: Any) -> BnasNetwork:
    """BNAS-F (ImageNet): cell latest_cell, 15 cells, C = 68 (release log: 39,781,442 params)."""
    return _imagenet("f", pretrained, kwargs)


@register_model
def bnas_g(pretrained: bool = False, **kwargs: Any) -> BnasNetwork:
    """BNAS-G (ImageNet): cell latest_cell, 11 cells, C = 74."""
    return _imagenet("g", pretrained, kwargs)


@register_model
def bnas_h(pretrained: bool = False, **kwargs: Any) -> BnasNetwork:
    """BNAS-H (ImageNet): cell latest_cell, 16 cells, C = 128."""
    return _imagenet("h", pretrained, kwargs)


BNAS = MethodInfo("BNAS", "Sign + Scale", "Kim, Singh, Choi, ECCV 2020, arXiv 2002.06963")
describe_models(("bnas_a", "bnas_b", "bnas_c", "bnas_d", "bnas_e", "bnas_f", "bnas_g", "bnas_h"), BNAS)
