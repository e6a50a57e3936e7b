"""The work-sharing BNAS search cell: the same math as the reference :class:`SearchCell`, computed per input state.

Kim, Singh, Choi, "Learning Architectures for Binary Networks", ECCV 2020, arXiv 2002.06963 (docs/bnas.md §3-4);
the techniques (docs/internals.md, "The search supernet"):

1. In training mode every affine-free BN that sees the same tensor gives the same output and the same running
   statistics. So BN+sign, max-pool+BN and avg-pool+BN are computed once per input state (5 states with outgoing
   edges per cell: c_{k-2}, c_{k-1}, nodes 0-2) instead of once per edge-op.
2. One conv call per (input state, kernel type): the weights of all edges that read a state are one tensor of
   (edges x C) output filters. XNOR binarisation is per output filter, so grouping changes nothing.
3. Zeroise is not computed; its alpha still gets its gradient through the softmax normalisation.

On CPU each state's convs and the mixing are one autograd node (:class:`_MixedConvs`): the binary convs run their
forward as exact int8 convs (:mod:`methods.binary.int8_conv`), the ReLU mask is applied once per conv in backward, the
mixing coefficients are folded into the backward conv weights (coef > 0), and the coefficient and weight gradients
are computed only in the step that needs them. It keeps no more of the conv outputs than that step needs: 1-byte ReLU
masks in the weight step; in the architecture step the 5x5 kernels' outputs, the 3x3 ones being recomputed in
backward (search peak 4.0 -> 3.4 GB at the paper configuration for ~+5 % time; `RECOMPUTE_TAPS`).
The supernet's CPU activations are channels_last (the int8 convs' and the pools' layout: NCHW CPU max/avg-pool
kernels were 4-6x slower; values and max-pool tie routing are the same).
CUDA, autocast and torch.compile take the op-by-op path (:func:`fused_node_applies`; tested equal).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from methods.binary import BinaryConv2d, SteSign, XnorWeight
from methods.binary.int8_conv import backward_will_use, gradient_edge, int8_conv_forward
from methods.bnas.operations import CONV_OPS, OP_SPECS, conv_geometry, xnor_weight_quantizer
from methods.bnas.search_cell import SearchCellBase, edge_index, search_op

__all__ = ["RECOMPUTE_TAPS", "StateOps", "SharedSearchCell", "fused_node_applies"]


# conv outputs of kernels with at most this many taps (3x3, dilated 3x3) are recomputed in the backward pass of the
# architecture step instead of kept: half the kept outputs for about a quarter of the cost of recomputing all (0: keep
# all)
RECOMPUTE_TAPS = 9


def fused_node_applies(h: torch.Tensor) -> bool:
    """Whether a state's convs and mixing run as one autograd node (:class:`_MixedConvs`): on CPU, outside autocast
    and torch.compile. Elsewhere the op-by-op path runs (the same math: tested equal)."""
    return h.device.type == "cpu" and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()


class _MixedConvs(torch.autograd.Function):
    """The mixed outputs of the E edges of one state (a tuple of E (N, C, H', W') tensors):
    sum_k coef[k, e] * relu(conv_k(xb))[:, e] + sum_j coef[K + j, e] * pool_j.

    One node for the state instead of a conv, a ReLU and a multiply-add per op. Its backward applies the ReLU mask
    once per conv to the incoming gradient G and folds the mixing coefficients into the conv weights of the backward
    conv (coef > 0, so coef * relu(conv(x, W)) = relu(conv(x, coef * W))): no G * coef tensor per op, and the
    coefficient gradients, sum(G * y), only where the backward pass needs them (the architecture step), as the weight
    gradients only in the weight step.
    """

    @staticmethod
    def forward(ctx, xb, coef, geoms, int8, n_edges, n_convs, *tensors):  # type: ignore[override]
        # 4-D (N, E*C, H', W') tensors wherever possible: the int8 convs' outputs are channels_last, and 5-D views of
        # them are not dense in any order TensorIterator can coalesce (elementwise ops on them ran 5-10x slower)
        ws, pools = tensors[:n_convs], tensors[n_convs:]
        acc: torch.Tensor | None = None
        ys = []
        for k, (w, (stride, pad, dil)) in enumerate(zip(ws, geoms, strict=True)):
            if int8:
                y = int8_conv_forward(xb, w, stride, pad, dil, relu=True, any_layout=True)
            else:
                y = F.conv2d(xb, w, None, stride, pad, dil).relu_()
            ys.append(y)
            c = _per_channel(coef[k], y.shape[1] // n_edges)
            acc = y * c if acc is None else acc.addcmul_(y, c)
        for j, p in enumerate(pools):
            c5 = coef[n_convs + j].view(1, n_edges, 1, 1, 1)
            if acc is None:
                acc = (p.unsqueeze(1) * c5).flatten(1, 2)
            else:
                _edges(acc, n_edges).addcmul_(p.unsqueeze(1), c5)
        assert acc is not None
        # what the backward pass needs of each conv output: its values for the coefficient gradients (the
        # architecture step: coef requires grad), else only its ReLU mask (kept as 1 byte per value). Small kernels'
        # outputs are not kept in the architecture step: the backward recomputes them (deterministic, bit-equal)
        arch = coef.requires_grad
        kinds = [
            ("recompute" if w[0].numel() // w.shape[1] <= RECOMPUTE_TAPS else "value") if arch else "mask" for w in ws
        ]
        kept = [
            y if kd == "value" else (torch.gt(y, 0) if kd == "mask" else None) for y, kd in zip(ys, kinds, strict=True)
        ]
        del ys
        ctx.save_for_backward(xb, coef, *ws, *kept, *pools)
        ctx.conf = (geoms, n_edges, n_convs, int8, kinds)
        ctx.edges = [gradient_edge(t) for t in (xb, coef, *tensors)]
        return _edges(acc, n_edges).unbind(1)

    @staticmethod
    def backward(ctx, *gs):  # type: ignore[override]
        geoms, n_edges, n_convs, int8, kinds = ctx.conf
        kinds = list(kinds)  # (updated below as outputs are recomputed; ctx's list stays as saved)
        xb, coef, *rest = ctx.saved_tensors
        ws, kept, pools = rest[:n_convs], list(rest[n_convs : 2 * n_convs]), rest[2 * n_convs :]
        need = [e is not None and backward_will_use(e) for e in ctx.edges]
        need_x, need_coef, need_t = need[0], need[1], need[2:]

        def conv_out(k: int) -> torch.Tensor:  # conv output k as the forward computed it (bit for bit)
            stride, pad, dil = geoms[k]
            if int8:
                return int8_conv_forward(xb, ws[k], stride, pad, dil, relu=True, any_layout=True)
            return F.conv2d(xb, ws[k], None, stride, pad, dil).relu_()

        # the edges' gradients, gathered once into the layout of the conv outputs (channels_last from the int8
        # forward; the states and their gradients are in it too, so these are plain copies, not transposes)
        if ws:
            if all(t is None for t in kept):
                kept[0] = conv_out(0)
                kinds = ["value", *kinds[1:]]
            layout = next(t for t in kept if t is not None)
            g = torch.empty_like(layout, dtype=gs[0].dtype)
        else:
            p0 = pools[0]
            g = p0.new_empty((p0.shape[0], n_edges * p0.shape[1], *p0.shape[2:]))
        g5 = _edges(g, n_edges)
        for e, ge in enumerate(gs):
            g5[:, e].copy_(ge)
        gcoef = torch.zeros_like(coef) if need_coef else None
        gx: torch.Tensor | None = None
        gts: list[torch.Tensor | None] = []
        for k, (w, (stride, pad, dil)) in enumerate(zip(ws, geoms, strict=True)):
            c = w.shape[0] // n_edges
            if kinds[k] == "recompute" and (need_coef or need_x or need_t[k]):
                kept[k], kinds[k] = conv_out(k), "value"
            y, kept[k] = kept[k], None  # (freed once used)
            if gcoef is not None:
                gcoef[k] = (g * y).sum(dim=(0, 2, 3)).view(n_edges, c).sum(1)
            gw = None
            if need_x or need_t[k]:
                # the ReLU mask: from the values, or the kept mask (g * False = 0, as threshold_backward's 0)
                gm = torch.ops.aten.threshold_backward(g, y, 0) if kinds[k] == "value" else g * y
                del y
                scale = coef[k].repeat_interleave(c).view(-1, 1, 1, 1)
                gxk, gw, _ = torch.ops.aten.convolution_backward(
                    gm, xb, w * scale, None, stride, pad, dil, False, [0, 0], 1, [need_x, need_t[k], False]
                )
                if gw is not None:
                    gw = gw * scale
                if gxk is not None:
                    gx = gxk if gx is None else gx.add_(gxk)
            gts.append(gw)
        for j, p in enumerate(pools):
            c5 = coef[n_convs + j].view(1, n_edges, 1, 1, 1)
            if gcoef is not None:
                gcoef[n_convs + j] = (g5 * p.unsqueeze(1)).sum(dim=(0, 2, 3, 4))
            gts.append((g5 * c5).sum(1) if need_t[n_convs + j] else None)
        return gx, gcoef, None, None, None, None, *gts


def _per_channel(coef_k: torch.Tensor, c: int) -> torch.Tensor:
    """(E,) edge coefficients as a (1, E*C, 1, 1) per-channel multiplier."""
    return coef_k.repeat_interleave(c).view(1, -1, 1, 1)


def _edges(t: torch.Tensor, n_edges: int) -> torch.Tensor:
    """(N, E*C, H, W) -> (N, E, C, H, W) view."""
    return t.view(t.shape[0], n_edges, t.shape[1] // n_edges, t.shape[2], t.shape[3])


_POOLS = tuple(name for name, spec in OP_SPECS.items() if spec.kind in ("max_pool", "avg_pool"))


class StateOps(nn.Module):
    """Every candidate op on the edges that leave one input state, for all those edges at once.

    Args:
        c: channels.
        stride: stride of these edges.
        n_edges: how many edges leave the state.
        primitives: the search space (column order of the mixing weights): ops of S_B only.

    Raises:
        ValueError: an op outside S_B (the darts space needs the reference cell).
    """

    def __init__(self, c: int, stride: int, n_edges: int, primitives: tuple[str, ...]) -> None:
        super().__init__()
        if extra := [p for p in primitives if p not in (*CONV_OPS, *_POOLS, "none")]:
            raise ValueError(
                f"the shared search cell supports only S_B's ops; {extra} need impl='reference' (SuperNet)"
            )
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
        self.pools = nn.ModuleDict({n: cast(nn.Module, search_op(n, c, stride)) for n in _POOLS if n in primitives})
        self.columns = [primitives.index(n) for n in (*self.convs, *self.pools)]
        # on the module's device: indexing with a Python list copies it to the device on every call (not allowed
        # while a CUDA graph is captured)
        self.column_index: torch.Tensor
        self.register_buffer("column_index", torch.tensor(self.columns), persistent=False)
        self.geoms = [(list(c.stride), list(c.padding), list(c.dilation)) for c in self._convs()]

    def _convs(self) -> list[BinaryConv2d]:
        """The grouped binary convs, one per conv op of the space."""
        return cast(list[BinaryConv2d], list(self.convs.values()))

    def forward(self, h: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The mixed outputs of the n_edges edges, each (N, C, H', W'); `weights` is (n_edges, len(primitives))."""
        if fused_node_applies(h):
            return self._fused(h, weights)
        coef = weights.index_select(1, self.column_index).t().reshape(len(self.columns), 1, self.n_edges, 1, 1, 1)
        acc: torch.Tensor | None = None
        col = 0
        if self.bn is not None:
            xb = self.sign(self.bn(h))
            for conv in self._convs():
                y = conv.forward_signs(xb, relu=True, any_layout=True)
                y = y.view(y.shape[0], self.n_edges, self.c, y.shape[2], y.shape[3])
                acc = y * coef[col] if acc is None else torch.addcmul(acc, y, coef[col])
                col += 1
        hp = self._pool_input(h)
        for pool in self.pools.values():
            p = pool(hp).unsqueeze(1)
            acc = p * coef[col] if acc is None else torch.addcmul(acc, p, coef[col])
            col += 1
        assert acc is not None
        # unbind (not indexing): backward stacks the edge gradients once instead of zero-filling and summing one
        # full-size tensor per edge
        return acc.unbind(1)

    def _pool_input(self, h: torch.Tensor) -> torch.Tensor:
        """h for the pools: channels_last on CPU (4-6x faster there than NCHW; same values, same max-pool ties)."""
        if self.pools and h.device.type == "cpu":
            return h.contiguous(memory_format=torch.channels_last)
        return h

    def _fused(self, h: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The same outputs through one autograd node for the convs and the mixing (:class:`_MixedConvs`)."""
        coef = weights.index_select(1, self.column_index).t()  # (ops, edges)
        hp = self._pool_input(h)
        pools = [pool(hp) for pool in self.pools.values()]
        if self.bn is None:
            xb, ws, int8 = h, [], False
        else:
            xb = self.sign(self.bn(h))
            convs = self._convs()
            ws = [c.weight if c.weight_quantizer is None else c.weight_quantizer(c.weight) for c in convs]
            int8 = all(c._int8_ok(xb) for c in convs)
        return _MixedConvs.apply(xb, coef, self.geoms, int8, self.n_edges, len(ws), *ws, *pools)


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
        # the alpha rows of all edges, grouped by input state, as one index on the module's device (see StateOps)
        self.edge_order: torch.Tensor
        self.register_buffer("edge_order", torch.tensor([e for ids in self.edge_ids for e in ids]), persistent=False)
        self.edge_counts = [len(ids) for ids in self.edge_ids]

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
        return self._conv(h, op).weight[k * self.c : (k + 1) * self.c]

    def set_fp(self, edge: int, op: str) -> None:
        h, k = self._locate(edge)
        conv = self._conv(h, op)
        q = conv.weight_quantizer
        assert isinstance(q, XnorWeight)
        if q.binary_rows is None:
            q.binary_rows = torch.ones(conv.weight.shape[0], dtype=torch.bool)
        q.binary_rows[k * self.c : (k + 1) * self.c] = False

    def _conv(self, state: int, op: str) -> BinaryConv2d:
        """The grouped conv of op `op` over the edges leaving input state `state`."""
        return cast(BinaryConv2d, cast(StateOps, self.state_ops[state]).convs[op])

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        mixed: list[tuple[torch.Tensor, ...]] = []  # per state, its edges' mixed outputs
        rows = weights.index_select(0, self.edge_order).split(self.edge_counts)  # per state, its edges' alphas
        for i in range(self.steps):
            while len(mixed) < len(states):
                h = len(mixed)
                mixed.append(self.state_ops[h](states[h], rows[h]))
            s = None
            for h in range(len(states)):
                term = mixed[h][i - self._nodes_of(h)[0]]
                s = term if s is None else s + term
            assert s is not None
            states.append(s)
        return self.finish(states, s1)
