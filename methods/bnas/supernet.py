"""The BNAS search supernet: a softmax-weighted MixedOp over S_B on every edge, alphas shared per cell type.

Kim, Singh, Choi, "Learning Architectures for Binary Networks", ECCV 2020, arXiv 2002.06963 (bnas.md §3-4).
This is the straightforward per-op implementation (every op of every edge computed on its own, as the release does,
except that Zeroise is not computed: its output is zero and the alpha gradients still flow through the softmax). It is
the reference that faster implementations must match.

Search-time ops: Zeroise; max/avg pool 3x3 each followed by BN(affine=False); binary convs BN(affine=False) -> sign ->
conv (XNOR weights) -> ReLU. Preprocessing is full precision (BN -> conv -> ReLU, affine=False). The T_B skip is present
as in the final networks (`skip=False` removes it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods.bnas.genotypes import PRIMITIVES
from methods.bnas.operations import BinConvBlock

__all__ = ["FPConvBlock", "MixedOp", "SearchCell", "SuperNet", "num_edges"]


def num_edges(steps: int = 4) -> int:
    """Edges of a DARTS cell with `steps` nodes (14 for 4)."""
    return sum(2 + i for i in range(steps))


class FPConvBlock(nn.Module):
    """Full-precision BN -> conv -> ReLU (the release's search-time ReLUConvBN, affine=False)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = False) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in, affine=affine)
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(self.bn(x)))


def _search_op(name: str, c: int, stride: int) -> nn.Module | None:
    if name == "none":
        return None  # Zeroise: contributes zeros, not computed
    if name == "max_pool_3x3":
        return nn.Sequential(nn.MaxPool2d(3, stride, 1), nn.BatchNorm2d(c, affine=False))
    if name == "avg_pool_3x3":
        return nn.Sequential(nn.AvgPool2d(3, stride, 1, count_include_pad=False), nn.BatchNorm2d(c, affine=False))
    k, dil = (3 if name.endswith("3x3") else 5), (2 if "dil" in name else 1)
    pad = dil * (k - 1) // 2
    return BinConvBlock(c, c, k, stride, pad, dil, affine=False)


class MixedOp(nn.Module):
    """sum_k softmax(alpha)_k * op_k(x) over the primitives (Zeroise's term is zero)."""

    def __init__(self, c: int, stride: int, primitives: tuple[str, ...] = PRIMITIVES) -> None:
        super().__init__()
        self.primitives = primitives
        self.ops = nn.ModuleList()
        self.op_index: list[int] = []
        for k, name in enumerate(primitives):
            op = _search_op(name, c, stride)
            if op is not None:
                self.ops.append(op)
                self.op_index.append(k)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = None
        for op, k in zip(self.ops, self.op_index, strict=True):
            h = weights[k] * op(x)
            out = h if out is None else out + h
        assert out is not None
        return out


class SearchCell(nn.Module):
    """A search cell of template T_B: 4 nodes, each the sum of MixedOps over all its predecessors."""

    def __init__(
        self,
        c_pp: int,
        c_p: int,
        c: int,
        reduction: bool,
        reduction_prev: bool,
        first: bool,
        skip: bool = True,
        primitives: tuple[str, ...] = PRIMITIVES,
        steps: int = 4,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.preprocess0 = FPConvBlock(c_pp, c, 3, 2, 1) if reduction_prev else FPConvBlock(c_pp, c, 1, 1, 0)
        self.preprocess1 = FPConvBlock(c_p, c, 1, 1, 0)
        self.edges = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                self.edges.append(MixedOp(c, 2 if reduction and j < 2 else 1, primitives))
        self.has_skip = skip and not first
        self.preprocess_res: nn.Module | None = None
        if self.has_skip and reduction:
            self.preprocess_res = nn.Sequential(nn.BatchNorm2d(c_p), nn.Conv2d(c_p, 4 * c, 2, 2, bias=True))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.steps):
            s = sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        out = torch.cat(states[-4:], dim=1)
        if not self.has_skip:
            return out
        return out + (self.preprocess_res(s1) if self.preprocess_res is not None else s1)


class SuperNet(nn.Module):
    """The BNAS search network (paper: 8 cells, C = 16, reductions at cells 2 and 5, alphas 14 x 7 per cell type).

    Args:
        init_channels: C of the first cells.
        layers: number of cells.
        no_zeroise: remove Zeroise from the search space (the "No Zeroise" ablation).
        skip: keep the T_B skip connections (False: "No Skip").
    """

    def __init__(
        self,
        init_channels: int = 16,
        layers: int = 8,
        num_classes: int = 10,
        no_zeroise: bool = False,
        skip: bool = True,
        steps: int = 4,
        stem_multiplier: int = 3,
    ) -> None:
        super().__init__()
        self.primitives = tuple(p for p in PRIMITIVES if not (no_zeroise and p == "none"))
        self.steps = steps
        c = init_channels
        c_curr = stem_multiplier * c
        self.stem = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, c_curr, 3, 1, 1, bias=False), nn.ReLU())
        c_pp, c_p, c_curr = c_curr, c_curr, c
        cells, reduction_prev = [], False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_curr *= 2
            cells.append(
                SearchCell(
                    c_pp,
                    c_p,
                    c_curr,
                    reduction,
                    reduction_prev,
                    first=i == 0,
                    skip=skip,
                    primitives=self.primitives,
                    steps=steps,
                )
            )
            reduction_prev = reduction
            c_pp, c_p = c_p, 4 * c_curr
        self.cells = nn.ModuleList(cells)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)
        k = num_edges(steps)
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(k, len(self.primitives)))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(k, len(self.primitives)))

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters (alphas)."""
        return [self.alphas_normal, self.alphas_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the alphas."""
        ids = {id(a) for a in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        w_normal = F.softmax(self.alphas_normal, dim=-1)
        w_reduce = F.softmax(self.alphas_reduce, dim=-1)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
        return self.classifier(self.global_pool(s1).flatten(1))
