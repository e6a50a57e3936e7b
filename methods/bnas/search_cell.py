"""The search cell of template T_B (docs/bnas.md §3): what the per-op reference cell (:class:`SearchCell`) and the
work-sharing one (:class:`methods.bnas.supernet_shared.SharedSearchCell`) have in common, and the reference itself.

Kim, Singh, Choi, "Learning Architectures for Binary Networks", ECCV 2020, arXiv 2002.06963. The cell has two inputs
(c_{k-2}, c_{k-1}) preprocessed by real-valued BN -> conv -> ReLU blocks, 4 nodes each the sum of one mixed op per
predecessor (DARTS edge order), and its output is the concatenation of the nodes plus the T_B skip from c_{k-1}.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from methods.binary import BinaryConv2d
from methods.bnas.genotypes import PRIMITIVES
from methods.bnas.operations import CONV_OPS, OP_SPECS, build_op, xnor_weight_quantizer

__all__ = ["FPConvBlock", "MixedOp", "SearchCell", "SearchCellBase", "edge_index", "num_edges", "search_op"]


def num_edges(steps: int = 4) -> int:
    """Edges of a DARTS cell with `steps` nodes (14 for 4)."""
    return sum(2 + i for i in range(steps))


def edge_index(node: int, state: int) -> int:
    """DARTS edge order: the edge from state `state` (0 = c_{k-2}, 1 = c_{k-1}, 2.. = nodes) into node `node`."""
    return sum(2 + i for i in range(node)) + state


class FPConvBlock(nn.Module):
    """BN -> conv -> ReLU (the release's search-time ReLUConvBN, affine=False), FP unless `binary_weight`."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int,
        padding: int,
        affine: bool = False,
        binary_weight: bool = False,
    ) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in, affine=affine)
        self.conv = BinaryConv2d(
            c_in, c_out, kernel, stride, padding, weight_quantizer=xnor_weight_quantizer() if binary_weight else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(self.bn(x)))


def search_op(name: str, c: int, stride: int) -> nn.Module | None:
    """The search-time op (:data:`methods.bnas.operations.OP_SPECS`): None for Zeroise (not computed), pools followed
    by BN(affine=False) (DARTS, the release), every other op its final-network op with BN(affine=False).

    Raises:
        ValueError: an op outside `OP_SPECS`.
    """
    spec = OP_SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown search op {name!r}; expected one of {', '.join(OP_SPECS)}")
    if spec.kind == "zero":
        return None  # Zeroise: contributes zeros, not computed
    if spec.kind in ("max_pool", "avg_pool"):
        return nn.Sequential(build_op(name, c, stride, False), nn.BatchNorm2d(c, affine=False))
    return build_op(name, c, stride, False)


class MixedOp(nn.Module):
    """sum_k softmax(alpha)_k * op_k(x) over the primitives (Zeroise's term is zero)."""

    def __init__(self, c: int, stride: int, primitives: tuple[str, ...] = PRIMITIVES) -> None:
        super().__init__()
        self.primitives = primitives
        self.ops = nn.ModuleList()
        self.op_index: list[int] = []
        for k, name in enumerate(primitives):
            op = search_op(name, c, stride)
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

    def op(self, name: str) -> nn.Module:
        """The module of op `name` on this edge (not Zeroise)."""
        return self.ops[self.op_index.index(self.primitives.index(name))]

    def conv(self, name: str) -> BinaryConv2d:
        """The binary conv of op `name` on this edge (a single-conv op of S_B, `CONV_OPS`)."""
        if name not in CONV_OPS:
            raise ValueError(f"op {name!r} has no single conv; expected one of {', '.join(CONV_OPS)}")
        return cast(BinaryConv2d, self.op(name).conv)


class SearchCellBase(nn.Module):
    """What both cell implementations share: preprocessing, the node layout and the T_B skip."""

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
        official_binary_preprocess: bool = False,
    ) -> None:
        super().__init__()
        self.reduction, self.steps, self.c, self.primitives = reduction, steps, c, primitives
        b = official_binary_preprocess
        if reduction_prev:
            self.preprocess0 = FPConvBlock(c_pp, c, 3, 2, 1, binary_weight=b)
        else:
            self.preprocess0 = FPConvBlock(c_pp, c, 1, 1, 0, binary_weight=b)
        self.preprocess1 = FPConvBlock(c_p, c, 1, 1, 0, binary_weight=b)
        self.has_skip = skip and not first
        self.preprocess_res: nn.Module | None = None
        if self.has_skip and reduction:
            res = BinaryConv2d(c_p, 4 * c, 2, 2, bias=True, weight_quantizer=xnor_weight_quantizer() if b else None)
            self.preprocess_res = nn.Sequential(nn.BatchNorm2d(c_p), res)

    def stride(self, state: int) -> int:
        """Stride of the edges leaving input state `state` (2 for the cell inputs of a reduction cell)."""
        return 2 if self.reduction and state < 2 else 1

    def finish(self, nodes: list[torch.Tensor], s1: torch.Tensor) -> torch.Tensor:
        """Concat of the last 4 nodes plus the T_B skip from c_{k-1}."""
        out = torch.cat(nodes[-4:], dim=1)
        if not self.has_skip:
            return out
        return out + (self.preprocess_res(s1) if self.preprocess_res is not None else s1)

    def set_fp(self, edge: int, op: str) -> None:
        """Keep the weights of op `op` on edge `edge` full precision (the release's BinOp index bug)."""
        raise NotImplementedError


class SearchCell(SearchCellBase):
    """The reference search cell of template T_B: 4 nodes, each the sum of MixedOps over all its predecessors."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.edges = nn.ModuleList()
        for i in range(self.steps):
            for j in range(2 + i):
                self.edges.append(MixedOp(self.c, self.stride(j), self.primitives))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.steps):
            s = sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return self.finish(states, s1)

    def set_fp(self, edge: int, op: str) -> None:
        cast(MixedOp, self.edges[edge]).conv(op).weight_quantizer = None
