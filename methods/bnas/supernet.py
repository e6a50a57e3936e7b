"""The BNAS search supernet: a softmax-weighted MixedOp over the search space on every edge, alphas shared per cell
type.

Kim, Singh, Choi, "Learning Architectures for Binary Networks", ECCV 2020, arXiv 2002.06963 (docs/bnas.md §3-4).

Search spaces (`space`, :data:`methods.bnas.genotypes.SPACES`): "bnas" (S_B, the paper's), "darts" (the DARTS space
with binarised convs, Liu et al., ICLR 2019) or "bats" (BATS's grouped binary convs with channel shuffle, Bulat et al.,
ECCV 2020); the last two with the reference implementation only. Search-time ops: Zeroise; max/avg pool 3x3
each followed by BN(affine=False); every other op is its final-network op (methods.bnas.operations) with
BN(affine=False): binary convs BN -> sign -> conv (XNOR weights) -> ReLU, the DARTS space's separable convs chains of
those, skip_connect the identity (a binary factorized reduction at stride 2). Preprocessing is full precision
(BN -> conv -> ReLU, affine=False). The T_B skip is present as in the final networks (`skip=False` removes it).

Two cell implementations of the same math:
- `impl="reference"` (:class:`SearchCell`): every op of every edge computed on its own, as the release does, except
  that Zeroise is not computed (its output is zero; the alpha gradients still flow through the softmax). Any space.
- `impl="shared"` (:class:`methods.bnas.supernet_shared.SharedSearchCell`, the default of `bnas search`): BN+sign and
  each pool+BN computed once per input state, one conv call per (input state, kernel type) with the weights of all
  edges that read the state grouped along the output channels (docs/internals.md, "The search supernet"). The tests
  check that outputs, losses and the gradients of weights and alphas equal the reference's (float64, power-of-two
  scale). S_B only (its grouping is specialised for single-conv ops and pools).

Release switches (docs/bnas.md §8):
- `official_fp_tail`: the BinOp index bug leaves the last N convs in module order with FP weights, N = the number of
  preprocess and res convs (18 at the paper configuration: nearly all convs on the edges into node 3 of the last cell);
  their inputs stay binary. S_B only.
- `official_binary_preprocess`: the first release's stale-name filter binarised the weights of the preprocess convs
  and of the reduction cells' res convs in the search network (inputs stay real).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from methods.binary import BinaryConv2d
from methods.bnas.genotypes import PRIMITIVES, SPACES
from methods.bnas.operations import CONV_OPS
from methods.bnas.search_cell import SearchCell, SearchCellBase, num_edges
from methods.bnas.supernet_shared import SharedSearchCell

__all__ = ["SuperNet", "release_fp_tail"]


class SuperNet(nn.Module):
    """The BNAS search network (paper: 8 cells, C = 16, reductions at cells 2 and 5, alphas 14 x 7 per cell type).

    Args:
        init_channels: C of the first cells.
        layers: number of cells.
        exclude_zeroise: remove Zeroise from the search space (the "No Zeroise" ablation).
        skip: keep the T_B skip connections (False: "No Skip").
        impl: "shared" (BN+sign and pools once per input state, grouped convs; space "bnas" only) or "reference"
            (per-op).
        official_fp_tail: release BinOp index bug: the last N convs keep FP weights (module docstring; "bnas" only).
        official_binary_preprocess: first-release stale-name filter: preprocess and res conv weights binarised.
        activation_checkpointing: keep only each cell's inputs for backward and recompute the cell there (less memory,
            about one more forward of time); BN running statistics are updated once, as without it.
        space: the search space, a key of :data:`methods.bnas.genotypes.SPACES` ("bnas": S_B, 14 x 7 alphas;
            "darts": the binarised DARTS space, 14 x 8; "bats": BATS's grouped binary convs, 14 x 8).
        temperature: the mixing weights are softmax(alpha / temperature) (1: BNAS and DARTS; BATS's temperature-
            controlled softmax, Bulat et al. ECCV 2020, sets it below 1 to sharpen them; its value is UNVERIFIED).

    Raises:
        ValueError: unknown `space` or `impl`; `impl="shared"` or `official_fp_tail` with a space other than "bnas".
    """

    def __init__(
        self,
        init_channels: int = 16,
        layers: int = 8,
        num_classes: int = 10,
        exclude_zeroise: bool = False,
        skip: bool = True,
        steps: int = 4,
        stem_multiplier: int = 3,
        impl: Literal["shared", "reference"] = "shared",
        official_fp_tail: bool = False,
        official_binary_preprocess: bool = False,
        activation_checkpointing: bool = False,
        space: str = "bnas",
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
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
            cell_cls: type[SearchCellBase] = SharedSearchCell
        elif impl == "reference":
            cell_cls = SearchCell
        else:
            raise ValueError(f"impl must be 'shared' or 'reference', got {impl!r}")
        self.impl = impl
        self.primitives = tuple(p for p in SPACES[space] if not (exclude_zeroise and p == "none"))
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
                    official_binary_preprocess=official_binary_preprocess,
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
            cast(SearchCellBase, self.cells[cell_i]).set_fp(edge, op)
        # the cells' binary-input convs and their weight quantizers (`set_weight_binary` swaps them out and back)
        self._weight_quantizers = [
            (m, m.weight_quantizer)
            for m in self.cells.modules()
            if isinstance(m, BinaryConv2d) and m.binary_input and m.weight_quantizer is not None
        ]

    def set_weight_binary(self, binary: bool) -> None:
        """False: every cell conv with binary inputs runs on its real (latent) weights, True (the default): on its
        binarised weights again. BATS's binary-first search starts with binary activations and real weights (Bulat et
        al., ECCV 2020; the phases' lengths are UNVERIFIED): `search.real_weight_epochs`."""
        for conv, quantizer in self._weight_quantizers:
            conv.weight_quantizer = quantizer if binary else None

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters (alphas)."""
        return [self.alphas_normal, self.alphas_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the alphas."""
        ids = {id(a) for a in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and self.impl == "shared":
            # the shared cell's int8 convs and pools work channels_last on CPU: with every activation (and gradient)
            # in that layout the backward pass gathers edge gradients by plain copies, not transposes
            x = x.contiguous(memory_format=torch.channels_last)
        s0 = s1 = self.stem(x)
        t = self.temperature
        w_normal = F.softmax(self.alphas_normal if t == 1.0 else self.alphas_normal / t, dim=-1)
        w_reduce = F.softmax(self.alphas_reduce if t == 1.0 else self.alphas_reduce / t, dim=-1)
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
                if nbt is not None and m.num_batches_tracked is not None:
                    m.num_batches_tracked.copy_(nbt)

    return lambda: (contextlib.nullcontext(), frozen())


def release_fp_tail(net: SuperNet) -> list[tuple[int, int, str]]:
    """The convs the release's BinOp leaves FP in the search net: the last N in module order, N = the number of
    preprocess and res convs (docs/bnas.md §8.1). Module order per cell: preprocess0, preprocess1, res (if any), then
    the edges in DARTS order with their conv ops in PRIMITIVES order. Returns (cell, edge, op) of the op convs among
    them.

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
