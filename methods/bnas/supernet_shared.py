"""The work-sharing BNAS search cell: the same math as the reference :class:`SearchCell`, computed per input state.

Kim, Singh, Choi, "Learning Architectures for Binary Networks", ECCV 2020, arXiv 2002.06963 (bnas.md §3-4);
the techniques are those measured in search_performance.md:

1. In training mode every affine-free BN that sees the same tensor gives the same output and the same running
   statistics. So BN+sign, max-pool+BN and avg-pool+BN are computed once per input state (5 states with outgoing
   edges per cell: c_{k-2}, c_{k-1}, nodes 0-2) instead of once per edge-op.
2. One conv call per (input state, kernel type): the weights of all edges that read a state are one tensor of
   (edges x C) output filters. XNOR binarisation is per output filter, so grouping changes nothing.
3. Zeroise is not computed; its alpha still gets its gradient through the softmax normalisation.

The mixing uses one fused multiply-add per op over all edges of a state at once. On CPU the pools (and their BNs) run
channels_last: PyTorch's NCHW CPU max/avg-pool kernels were 4-6x slower at these shapes; the values, including which
element a max-pool tie routes its gradient to, are the same. On CPU in float32 the binary convs run their forward as
exact int8 convs (:mod:`methods.binary.int8_conv`); their outputs and the pools' stay channels_last into the mixing
(no layout copies; the mixed sums are the same numbers in either layout).
"""

from __future__ import annotations

import torch
from torch import nn

from methods.binary import BinaryConv2d, SteSign
from methods.bnas.operations import xnor_weight_quantizer
from methods.bnas.supernet import CONV_OPS, SearchCell, SearchCellBase, SuperNet, conv_geometry, edge_index

__all__ = ["StateOps", "SharedSearchCell", "copy_from_reference"]


class StateOps(nn.Module):
    """Every candidate op on the edges that leave one input state, for all those edges at once.

    Args:
        c: channels.
        stride: stride of these edges.
        n_edges: how many edges leave the state.
        primitives: the search space (column order of the mixing weights).
    """

    def __init__(self, c: int, stride: int, n_edges: int, primitives: tuple[str, ...]) -> None:
        super().__init__()
        self.c, self.n_edges = c, n_edges
        conv_ops = [p for p in primitives if p in CONV_OPS]
        self.bn = nn.BatchNorm2d(c, affine=False) if conv_ops else None
        self.sign = SteSign()
        self.convs = nn.ModuleDict()
        for name in conv_ops:
            k, dil, pad = conv_geometry(name)
            self.convs[name] = BinaryConv2d(
                c, n_edges * c, k, stride, pad, dil, weight_quantizer=xnor_weight_quantizer()
            )
        self.pools = nn.ModuleDict()
        if "max_pool_3x3" in primitives:
            self.pools["max_pool_3x3"] = nn.Sequential(nn.MaxPool2d(3, stride, 1), nn.BatchNorm2d(c, affine=False))
        if "avg_pool_3x3" in primitives:
            self.pools["avg_pool_3x3"] = nn.Sequential(
                nn.AvgPool2d(3, stride, 1, count_include_pad=False), nn.BatchNorm2d(c, affine=False)
            )
        self.columns = [primitives.index(n) for n in (*self.convs, *self.pools)]

    def forward(self, h: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Mixed outputs of all edges: (N, n_edges, C, H', W'); `weights` is (n_edges, len(primitives))."""
        coef = weights[:, self.columns].t().reshape(len(self.columns), 1, self.n_edges, 1, 1, 1)
        acc: torch.Tensor | None = None
        col = 0
        if self.bn is not None:
            xb = self.sign(self.bn(h))
            for conv in self.convs.values():
                y = conv.forward_signs(xb, relu=True, any_layout=True)
                y = y.view(y.shape[0], self.n_edges, self.c, y.shape[2], y.shape[3])
                acc = y * coef[col] if acc is None else torch.addcmul(acc, y, coef[col])
                col += 1
        hp = h
        if self.pools and h.device.type == "cpu":  # CPU pools are 4-6x faster channels_last (same values, same ties)
            hp = h.contiguous(memory_format=torch.channels_last)
        for pool in self.pools.values():
            p = pool(hp).unsqueeze(1)
            acc = p * coef[col] if acc is None else torch.addcmul(acc, p, coef[col])
            col += 1
        assert acc is not None
        return acc


class SharedSearchCell(SearchCellBase):
    """A search cell of template T_B whose ops are grouped per input state (see the module docstring)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.state_ops = nn.ModuleList()
        self.edge_ids: list[list[int]] = []
        for h in range(self.steps + 1):  # c_{k-2}, c_{k-1} and nodes 0..steps-2 have outgoing edges
            nodes = self._nodes_of(h)
            self.edge_ids.append([edge_index(i, h) for i in nodes])
            self.state_ops.append(StateOps(self.c, self.stride(h), len(nodes), self.primitives))

    def _nodes_of(self, state: int) -> list[int]:
        return list(range(0 if state < 2 else state - 1, self.steps))

    def _locate(self, edge: int) -> tuple[int, int]:
        for h, ids in enumerate(self.edge_ids):
            if edge in ids:
                return h, ids.index(edge)
        raise ValueError(f"no edge {edge} in this cell")

    def edge_weight(self, edge: int, op: str) -> torch.Tensor:
        """The (C, C, k, k) view of the conv weight of op `op` on edge `edge` inside its grouped tensor."""
        h, k = self._locate(edge)
        return self.state_ops[h].convs[op].weight[k * self.c : (k + 1) * self.c]

    def set_fp(self, edge: int, op: str) -> None:
        h, k = self._locate(edge)
        q = self.state_ops[h].convs[op].weight_quantizer
        if q.binary_rows is None:
            q.binary_rows = torch.ones(q_rows := self.state_ops[h].n_edges * self.c, dtype=torch.bool)
            assert q_rows == self.state_ops[h].convs[op].weight.shape[0]
        q.binary_rows[k * self.c : (k + 1) * self.c] = False

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        # per state, its edges' mixed outputs; unbind (not indexing) so that backward stacks the edge gradients once
        # instead of zero-filling and summing one full-size tensor per edge
        mixed: list[tuple[torch.Tensor, ...]] = []
        for i in range(self.steps):
            while len(mixed) < len(states):
                h = len(mixed)
                mixed.append(self.state_ops[h](states[h], weights[self.edge_ids[h]]).unbind(1))
            s = None
            for h in range(len(states)):
                term = mixed[h][i - self._nodes_of(h)[0]]
                s = term if s is None else s + term
            assert s is not None
            states.append(s)
        return self.finish(states, s1)


@torch.no_grad()
def copy_from_reference(shared: SuperNet, ref: SuperNet) -> None:
    """Load a reference supernet's weights, BN statistics and alphas into a shared one of the same configuration.

    Every BN of the reference that reads the same state has the same statistics; the first edge's is taken.
    """
    if shared.impl != "shared" or ref.impl != "reference" or len(shared.cells) != len(ref.cells):
        raise ValueError("copy_from_reference needs a shared and a reference SuperNet of the same configuration")
    own = shared.state_dict()
    for name, t in ref.state_dict().items():
        if ".edges." not in name:
            own[name].copy_(t)
    for sc, rc in zip(shared.cells, ref.cells, strict=True):
        assert isinstance(sc, SharedSearchCell) and isinstance(rc, SearchCell)
        for h, ops in enumerate(sc.state_ops):
            first = rc.edges[sc.edge_ids[h][0]]
            if ops.bn is not None:
                ops.bn.load_state_dict(first.op(next(iter(ops.convs))).bn.state_dict())
            for name, pool in ops.pools.items():
                pool[1].load_state_dict(first.op(name)[1].state_dict())
            for name in ops.convs:
                for e in sc.edge_ids[h]:
                    sc.edge_weight(e, name).copy_(rc.edges[e].conv(name).weight)
