"""The BNAS search supernet: a softmax-weighted MixedOp over the search space on every edge, alphas shared per cell
type.

Kim, Singh, Choi, "Learning Architectures for Binary Networks", ECCV 2020, arXiv 2002.06963 (bnas.md §3-4).

Search spaces (`space`, :data:`methods.bnas.genotypes.SPACES`): "bnas" (S_B, the paper's) or "darts" (the DARTS space
with binarised convs, Liu et al., ICLR 2019; reference implementation only). Search-time ops: Zeroise; max/avg pool 3x3
each followed by BN(affine=False); every other op is its final-network op (methods.bnas.operations) with
BN(affine=False): binary convs BN -> sign -> conv (XNOR weights) -> ReLU, the DARTS space's separable convs chains of
those, skip_connect the identity (a binary factorized reduction at stride 2). Preprocessing is full precision
(BN -> conv -> ReLU, affine=False). The T_B skip is present as in the final networks (`skip=False` removes it).

Two cell implementations of the same math:
- `impl="reference"` (:class:`SearchCell`): every op of every edge computed on its own, as the release does, except
  that Zeroise is not computed (its output is zero; the alpha gradients still flow through the softmax). Any space.
- `impl="shared"` (:class:`methods.bnas.supernet_shared.SharedSearchCell`, the default of `bnas search`): BN+sign and
  each pool+BN computed once per input state, one conv call per (input state, kernel type) with the weights of all
  edges that read the state grouped along the output channels (search_performance.md techniques 1-3). The tests check
  that outputs, losses and the gradients of weights and alphas equal the reference's (float64, power-of-two scale).
  S_B only (its grouping is specialised for single-conv ops and pools).

Release switches (bnas.md §8):
- `official_fp_tail`: the BinOp index bug leaves the last N convs in module order with FP weights, N = the number of
  preprocess and res convs (18 at the paper configuration: nearly all convs on the edges into node 3 of the last cell);
  their inputs stay binary. S_B only.
- `binary_preprocess`: the first release's stale-name filter binarised the weights of the preprocess convs and of the
  reduction cells' res convs in the search network (inputs stay real).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from methods.binary import BinaryConv2d, XnorWeight
from methods.bnas.genotypes import PRIMITIVES, SPACES
from methods.bnas.operations import OPS, BinConvBlock, xnor_weight_quantizer

__all__ = [
    "CONV_OPS",
    "FPConvBlock",
    "MixedOp",
    "SearchCell",
    "SuperNet",
    "conv_geometry",
    "num_edges",
    "edge_index",
]

CONV_OPS = ("bin_dil_conv_3x3", "bin_dil_conv_5x5", "bin_conv_3x3", "bin_conv_5x5")


def num_edges(steps: int = 4) -> int:
    """Edges of a DARTS cell with `steps` nodes (14 for 4)."""
    return sum(2 + i for i in range(steps))


def edge_index(node: int, state: int) -> int:
    """DARTS edge order: the edge from state `state` (0 = c_{k-2}, 1 = c_{k-1}, 2.. = nodes) into node `node`."""
    return sum(2 + i for i in range(node)) + state


def conv_geometry(name: str) -> tuple[int, int, int]:
    """(kernel, dilation, padding) of a binary conv op of S_B (one of `CONV_OPS`).

    Raises:
        ValueError: not a single-conv op of S_B.
    """
    if name not in CONV_OPS:
        raise ValueError(f"conv_geometry: {name!r} is not a single-conv op of S_B ({', '.join(CONV_OPS)})")
    k, dil = (3 if name.endswith("3x3") else 5), (2 if "dil" in name else 1)
    return k, dil, dil * (k - 1) // 2


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


def _search_op(name: str, c: int, stride: int) -> nn.Module | None:
    """The search-time op: None for Zeroise (not computed), pools followed by BN(affine=False) (DARTS, the release),
    every other op its final-network op with BN(affine=False)."""
    if name == "none":
        return None  # Zeroise: contributes zeros, not computed
    if name == "max_pool_3x3":
        return nn.Sequential(nn.MaxPool2d(3, stride, 1), nn.BatchNorm2d(c, affine=False))
    if name == "avg_pool_3x3":
        return nn.Sequential(nn.AvgPool2d(3, stride, 1, count_include_pad=False), nn.BatchNorm2d(c, affine=False))
    if name in CONV_OPS:
        k, dil, pad = conv_geometry(name)
        return BinConvBlock(c, c, k, stride, pad, dil, affine=False)
    if name not in OPS:
        raise ValueError(f"unknown search op {name!r}; expected one of {', '.join(OPS)}")
    return OPS[name](c, stride, False)


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

    def op(self, name: str) -> nn.Module:
        """The module of op `name` on this edge (not Zeroise)."""
        return self.ops[self.op_index.index(self.primitives.index(name))]

    def conv(self, name: str) -> BinaryConv2d:
        """The binary conv of op `name` on this edge (a single-conv op of S_B, `CONV_OPS`)."""
        if name not in CONV_OPS:
            raise ValueError(f"op {name!r} has no single conv; expected one of {', '.join(CONV_OPS)}")
        return self.op(name).conv


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
        binary_preprocess: bool = False,
    ) -> None:
        super().__init__()
        self.reduction, self.steps, self.c, self.primitives = reduction, steps, c, primitives
        b = binary_preprocess
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
        self.edges[edge].conv(op).weight_quantizer = None


class SuperNet(nn.Module):
    """The BNAS search network (paper: 8 cells, C = 16, reductions at cells 2 and 5, alphas 14 x 7 per cell type).

    Args:
        init_channels: C of the first cells.
        layers: number of cells.
        no_zeroise: remove Zeroise from the search space (the "No Zeroise" ablation).
        skip: keep the T_B skip connections (False: "No Skip").
        impl: "shared" (BN+sign and pools once per input state, grouped convs; space "bnas" only) or "reference"
            (per-op).
        official_fp_tail: release BinOp index bug: the last N convs keep FP weights (module docstring; "bnas" only).
        binary_preprocess: first-release stale-name filter: preprocess and res conv weights binarised.
        activation_checkpointing: keep only each cell's inputs for backward and recompute the cell there (less memory,
            about one more forward of time); BN running statistics are updated once, as without it.
        space: the search space, a key of :data:`methods.bnas.genotypes.SPACES` ("bnas": S_B, 14 x 7 alphas;
            "darts": the binarised DARTS space, 14 x 8).

    Raises:
        ValueError: unknown `space` or `impl`; `impl="shared"` or `official_fp_tail` with a space other than "bnas".
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
        impl: Literal["shared", "reference"] = "shared",
        official_fp_tail: bool = False,
        binary_preprocess: bool = False,
        activation_checkpointing: bool = False,
        space: str = "bnas",
    ) -> None:
        super().__init__()
        if space not in SPACES:
            raise ValueError(f"unknown search space {space!r}; expected one of {', '.join(map(repr, SPACES))}")
        if space != "bnas" and impl == "shared":
            raise ValueError(
                f"impl='shared' supports only the 'bnas' search space (its grouped convs are specialised for S_B); "
                f"use impl='reference' for space {space!r}"
            )
        if space != "bnas" and official_fp_tail:
            raise ValueError(
                f"official_fp_tail emulates the release's BinOp index bug over S_B's module order; "
                f"it is not defined for space {space!r}"
            )
        self.activation_checkpointing = activation_checkpointing
        self.space = space
        if impl == "shared":
            from methods.bnas.supernet_shared import SharedSearchCell

            cell_cls: type[SearchCellBase] = SharedSearchCell
        elif impl == "reference":
            cell_cls = SearchCell
        else:
            raise ValueError(f"impl must be 'shared' or 'reference', got {impl!r}")
        self.impl = impl
        self.primitives = tuple(p for p in SPACES[space] if not (no_zeroise and p == "none"))
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
                cell_cls(
                    c_pp,
                    c_p,
                    c_curr,
                    reduction,
                    reduction_prev,
                    first=i == 0,
                    skip=skip,
                    primitives=self.primitives,
                    steps=steps,
                    binary_preprocess=binary_preprocess,
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
        self.fp_convs = release_fp_tail(self) if official_fp_tail else []
        for cell_i, edge, op in self.fp_convs:
            self.cells[cell_i].set_fp(edge, op)

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters (alphas)."""
        return [self.alphas_normal, self.alphas_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the alphas."""
        ids = {id(a) for a in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def xnor_quantizers(self) -> list[XnorWeight]:
        """Every XNOR weight quantizer (for test switches such as `pow2_scale`)."""
        return [m for m in self.modules() if isinstance(m, XnorWeight)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and self.impl == "shared":
            # the shared cell's int8 convs and pools work channels_last on CPU: with every activation (and gradient)
            # in that layout the backward pass gathers edge gradients by plain copies, not transposes
            x = x.contiguous(memory_format=torch.channels_last)
        s0 = s1 = self.stem(x)
        w_normal = F.softmax(self.alphas_normal, dim=-1)
        w_reduce = F.softmax(self.alphas_reduce, dim=-1)
        ckpt = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for cell in self.cells:
            w = w_reduce if cell.reduction else w_normal
            if ckpt:
                # the cells draw no random numbers: no RNG state to stash (reading it is not allowed in a CUDA graph)
                s0, s1 = (
                    s1,
                    checkpoint(
                        cell,
                        s0,
                        s1,
                        w,
                        use_reentrant=False,
                        preserve_rng_state=False,
                        context_fn=_frozen_bn_recompute(cell),
                    ),
                )
            else:
                s0, s1 = s1, cell(s0, s1, w)
        return self.classifier(self.global_pool(s1).flatten(1))


def _frozen_bn_recompute(module: nn.Module) -> Callable[[], tuple[Any, Any]]:
    """checkpoint() context_fn: the forward runs as usual; the recomputation in backward leaves the BN running
    statistics (and their batch counters) as the forward left them, so they are updated once per forward."""

    @contextlib.contextmanager
    def frozen() -> Iterator[None]:
        bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in bns]
        for m in bns:
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
        try:
            yield
        finally:
            for m, (mom, nbt) in zip(bns, saved, strict=True):
                m.momentum = mom
                if nbt is not None:
                    m.num_batches_tracked.copy_(nbt)

    return lambda: (contextlib.nullcontext(), frozen())


def release_fp_tail(net: SuperNet) -> list[tuple[int, int, str]]:
    """The convs the release's BinOp leaves FP in the search net: the last N in module order, N = the number of
    preprocess and res convs (bnas.md §8.1). Module order per cell: preprocess0, preprocess1, res (if any), then the
    edges in DARTS order with their conv ops in PRIMITIVES order. Returns (cell, edge, op) of the op convs among them.

    Raises:
        ValueError: the supernet has ops outside S_B (their convs would be missed).
    """
    if extra := [p for p in net.primitives if p not in PRIMITIVES]:
        raise ValueError(f"release_fp_tail is defined for S_B only; this supernet has ops {extra}")
    order: list[tuple[int, int, str] | None] = []
    n_excluded = 0
    conv_ops = [p for p in net.primitives if p in CONV_OPS]
    for ci, cell in enumerate(net.cells):
        pre = 2 + (cell.preprocess_res is not None)
        n_excluded += pre
        order += [None] * pre
        order += [(ci, e, op) for e in range(num_edges(net.steps)) for op in conv_ops]
    return [t for t in order[len(order) - n_excluded :] if t is not None]
