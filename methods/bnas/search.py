"""BNAS search objective, first-order bilevel step and genotype derivation (docs/bnas.md §4).

Objective of the architecture step: L = CE_val - lambda * H(softmax alpha) * exp(-t / tau), lambda = 1, tau = 7.7,
t = the epoch, H the mean Shannon entropy (natural log) over all normal and reduction edges. lambda = 0 is "No Div".
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from methods.binary.quantizers import XnorWeight, schedule_xnor_prep
from methods.bnas.genotypes import Genotype
from methods.bnas.supernet import SuperNet
from methods.registry import register_searcher

__all__ = ["mean_entropy", "diversity_weight", "derive_genotype", "BnasSearcher", "bnas"]


def mean_entropy(alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor, official_bug: bool = False) -> torch.Tensor:
    """Mean over the 2 x 14 edges of the entropy of softmax(alpha).

    `official_bug=True` reproduces the release: the reduce loop reads the normal loop's last index, so the reduce part
    is 14 x the entropy of the last reduce edge (docs/bnas.md §4, §8.3).
    """

    def ent(a: torch.Tensor) -> torch.Tensor:
        p = F.softmax(a, dim=-1)
        return -(p * F.log_softmax(a, dim=-1)).sum(-1)

    hn, hr = ent(alphas_normal), ent(alphas_reduce)
    if official_bug:
        hr = hr[-1].expand_as(hr)
    return (hn.sum() + hr.sum()) / (hn.numel() + hr.numel())


def diversity_weight(epoch: int, lam: float = 1.0, tau: float = 7.7) -> float:
    """lambda * exp(-epoch / tau): 1.0 at epoch 0, 0.27 at 10, 0.074 at 20 (docs/bnas.md §4)."""
    return lam * math.exp(-epoch / tau)


def _derive_cell(
    weights: torch.Tensor, primitives: tuple[str, ...], steps: int, exclude_zeroise: bool
) -> tuple[tuple[str, int], ...]:
    out: list[tuple[str, int]] = []
    start = 0
    usable = [k for k, p in enumerate(primitives) if not (exclude_zeroise and p == "none")]
    for i in range(steps):
        n = 2 + i
        w = weights[start : start + n]
        best = [max(usable, key=lambda k: float(w[j, k])) for j in range(n)]
        strength = [float(w[j, best[j]]) for j in range(n)]
        edges = sorted(range(n), key=lambda j: -strength[j])[:2]
        out += [(primitives[best[j]], j) for j in edges]
        start += n
    return tuple(out)


def derive_genotype(
    alphas_normal: torch.Tensor,
    alphas_reduce: torch.Tensor,
    primitives: tuple[str, ...],
    steps: int = 4,
    exclude_zeroise: bool = False,
    gamma: float = 1.0,
    official_gamma_bug: bool = False,
) -> Genotype:
    """Discretise the alphas (docs/bnas.md §4): per node keep the top-2 incoming edges ranked by their largest op
    weight, Zeroise included (unless `exclude_zeroise`), and on each the argmax op.

    `gamma` > 1 is the ImageNet transfer variant: the Zeroise weights are divided by gamma before ranking (the
    intended reading). `official_gamma_bug=True` divides row 0 (all ops of the first edge) instead, as the release does.
    """
    wn = F.softmax(alphas_normal.detach().float(), dim=-1).clone()
    wr = F.softmax(alphas_reduce.detach().float(), dim=-1).clone()
    if gamma != 1.0:
        for w in (wn, wr):
            if official_gamma_bug:
                w[0] = w[0] / gamma
            elif "none" in primitives:
                w[:, primitives.index("none")] /= gamma
    concat = tuple(range(2, 2 + steps))
    return Genotype(
        _derive_cell(wn, primitives, steps, exclude_zeroise),
        concat,
        _derive_cell(wr, primitives, steps, exclude_zeroise),
        concat,
    )


class BnasSearcher:
    """First-order bilevel BNAS search on a :class:`SuperNet` (docs/bnas.md §4).

    Per iteration: (1) an architecture step on a validation batch: Adam on the alphas with
    CE - lambda * H * exp(-epoch / tau), gradients taken w.r.t. the alphas only; (2) a weight step on a training batch:
    SGD (momentum, weight decay, no clipping) on the weights with plain CE, gradients w.r.t. the weights only. XNOR
    binarisation and its gradient rescale happen inside the binary convs' weight quantizers. As in the release, the
    latent weights are centred and clamped in place once per iteration, at the first (architecture) forward pass: the
    iteration starts by scheduling it, and the weight step's forward leaves them as they are, since the arch step does
    not change them (:class:`methods.binary.quantizers.XnorWeight`). Centring again there would not be a no-op: where
    the clamp fired, the clamped filters' means are no longer 0, so a second centring moves them and can flip signs.
    Evaluation passes between iterations centre and clamp once, at their first batch (the mode change and the weight
    step's update make the quantizers due).

    Distributed (torch.distributed initialised, world size > 1): every rank gets its shard of the global weight and
    architecture batches; after each step's gradient the gradients (of the alphas in the architecture step, of the
    weights in the weight step) are averaged over the ranks in one all-reduce, so every rank takes the same optimiser
    step and the alphas stay identical. With BN statistics over the global batch (the harness converts the BNs) this
    is the single-process math with the same global batch. DDP's reducer is not used: the two steps differentiate
    different parameter sets with `torch.autograd.grad`, which its backward hooks do not see.

    `amp_dtype` (CUDA only): forwards under `torch.autocast` with that dtype (bf16: no loss scaling); the losses are
    computed in float32 and the parameters, gradients and optimiser states stay float32.

    `cuda_graph` (CUDA, one process, not with the release's FP tail): the whole iteration (both forwards and
    backwards, both optimiser steps, the metrics) is captured once into a CUDA graph and replayed, so that an
    iteration costs one launch instead of thousands of small kernel launches (the paper configuration is launch-bound
    on a GPU). The first `graph_warmup` iterations run eagerly on a side stream (lazy cuDNN/cuBLAS set-up, optimiser
    states); the graph is captured again at every `new_epoch` (the learning rate and the regulariser weight are
    constants in it) and batches of another shape (an epoch's last, smaller batch) run eagerly on the same parameters
    and optimiser states. Replays run the same kernels on the same data as the eager step: with deterministic
    algorithms the result is bit for bit the eager one (measured on an H100). The quantizers' decision to centre and
    clamp is taken in Python, so the capture bakes it in: in the first forward of the iteration, not in the second,
    which is the eager pattern.

    `real_weight_epochs` > 0: BATS's binary-first phases (Bulat et al., ECCV 2020, as the spec reads them): the first
    that many epochs run the cells' binary convs on real weights behind binary activations
    (:meth:`SuperNet.set_weight_binary`), the rest fully binary.

    Interface: `new_epoch(epoch)`, `step(train_batch, val_batch)` (or `step_metrics`, which does not wait for the
    device), `genotype()`, `state_dict()`/`load_state_dict()`.
    """

    # per iteration, in train mode: the weight batch's loss and top-1, the architecture batch's (validation images)
    # cross-entropy and top-1, and the objective (cross-entropy - diversity weight x entropy). The eval-mode accuracy
    # over the validation split is the harness's `val/top1`.
    metric_names = ("train/loss", "train/top1", "search/arch_loss", "search/arch_top1", "search/objective")
    graph_warmup = 3  # eager iterations before the first capture (`cuda_graph`)

    def __init__(
        self,
        supernet: SuperNet,
        *,
        epochs: int,
        lr: float,
        lr_min: float,
        momentum: float,
        weight_decay: float,
        arch_lr: float,
        arch_betas: tuple[float, float],
        arch_weight_decay: float,
        lam: float,
        tau: float,
        official_entropy_bug: bool,
        official_lr_offset: bool,
        amp_dtype: torch.dtype | None = None,
        cuda_graph: bool = False,
        real_weight_epochs: int = 0,
    ) -> None:
        self.net = supernet
        self.real_weight_epochs = real_weight_epochs
        self.amp_dtype = amp_dtype
        on_cuda = next(supernet.parameters()).device.type == "cuda"
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        # the release's FP tail (`binary_rows`) selects filters with a boolean mask, which needs a host sync
        masked = any(getattr(m, "binary_rows", None) is not None for m in supernet.modules())
        self.cuda_graph = cuda_graph and on_cuda and not distributed and not masked
        self._graph: _CapturedStep | None = None
        self._eager_steps = 0
        self.epochs, self.lam, self.tau = epochs, lam, tau
        self.official_entropy_bug = official_entropy_bug
        self.official_lr_offset = official_lr_offset
        self._xnor = [m for m in supernet.modules() if isinstance(m, XnorWeight)]
        self.w_params = supernet.weight_parameters()
        self.a_params = supernet.arch_parameters()
        self.w_opt = torch.optim.SGD(self.w_params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.a_opt = torch.optim.Adam(
            self.a_params,
            lr=arch_lr,
            betas=arch_betas,
            weight_decay=arch_weight_decay,
            # on CUDA its step count lives on the device (no host read in the step), with or without the graph: the
            # bias correction is then computed in float32 on the device, so both paths give the same numbers
            capturable=on_cuda,
        )
        self.lr, self.lr_min = lr, lr_min
        self.epoch = 0

    def new_epoch(self, epoch: int) -> None:
        """Set the epoch (for the regulariser weight) and the weights' cosine learning rate for it (per epoch, from
        lr at epoch 0 towards lr_min, as the release's CosineAnnealingLR). With `official_lr_offset` epoch e uses the
        value of epoch e + 1, as the release does by stepping its scheduler at the start of every epoch (docs/bnas.md
        §8.9)."""
        self.epoch = epoch
        self._graph = None  # captured with the last epoch's learning rate and regulariser weight
        if self.real_weight_epochs:  # binary-first phases: binary activations with real weights, then both binary
            self.net.set_weight_binary(epoch >= self.real_weight_epochs)
        t = epoch + 1 if self.official_lr_offset else epoch
        for g in self.w_opt.param_groups:
            g["lr"] = _cosine(self.lr, self.lr_min, t, self.epochs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Supernet logits (float32), under autocast when `amp_dtype` is set and x is on CUDA."""
        if self.amp_dtype is not None and x.device.type == "cuda":
            # no cast cache while a graph is captured (its cached casts would not be replayed)
            cache = not torch.cuda.is_current_stream_capturing()
            with torch.autocast("cuda", dtype=self.amp_dtype, cache_enabled=cache):
                return self.net(x).float()
        return self.net(x)

    def arch_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(objective, CE, logits) of the architecture step on a validation batch."""
        logits = self.forward(x)
        ce = F.cross_entropy(logits, y)
        h = mean_entropy(self.a_params[0], self.a_params[1], official_bug=self.official_entropy_bug)
        return ce - diversity_weight(self.epoch, self.lam, self.tau) * h, ce, logits

    def step(
        self, train_batch: tuple[torch.Tensor, torch.Tensor], val_batch: tuple[torch.Tensor, torch.Tensor]
    ) -> dict[str, float]:
        """One search iteration. Returns the batch losses and accuracies (waits for the device)."""
        return dict(zip(self.metric_names, self.step_metrics(train_batch, val_batch).tolist(), strict=True))

    def step_metrics(
        self, train_batch: tuple[torch.Tensor, torch.Tensor], val_batch: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """One search iteration; its `metric_names` values as a float32 tensor on the device (the global batch's
        means), without waiting for the device."""
        if not self.cuda_graph:
            return self._step(train_batch, val_batch)
        key = tuple(t.shape for t in (*train_batch, *val_batch))
        g = self._graph
        if g is None or g.key != key:
            if self._eager_steps < self.graph_warmup or g is not None:  # warm-up, or a batch of another shape
                self._eager_steps += 1
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    m = self._step(train_batch, val_batch)
                torch.cuda.current_stream().wait_stream(side)
                return m
            g = self._graph = self._capture(train_batch, val_batch)
        for dst, src in zip(g.inputs, (*train_batch, *val_batch), strict=True):
            dst.copy_(src, non_blocking=True)
        g.graph.replay()
        return g.metrics.clone()

    def _capture(
        self, train_batch: tuple[torch.Tensor, torch.Tensor], val_batch: tuple[torch.Tensor, torch.Tensor]
    ) -> _CapturedStep:
        """Capture one iteration on static copies of these batches (nothing runs until the first replay)."""
        for p in (*self.w_params, *self.a_params):  # release the last graph's static gradients
            p.grad = None
        inputs = tuple(t.clone() for t in (*train_batch, *val_batch))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            metrics = self._step((inputs[0], inputs[1]), (inputs[2], inputs[3]))
        return _CapturedStep(graph, inputs, metrics, tuple(t.shape for t in inputs))

    def _step(
        self, train_batch: tuple[torch.Tensor, torch.Tensor], val_batch: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        self.net.train()
        schedule_xnor_prep(self._xnor)  # centre + clamp once per iteration: in the arch forward, not the weight one
        xv, yv = val_batch
        obj, ce_v, lv = self.arch_loss(xv, yv)
        grads = _average_over_ranks(torch.autograd.grad(obj, self.a_params))
        for p, g in zip(self.a_params, grads, strict=True):
            p.grad = g
        self.a_opt.step()
        xt, yt = train_batch
        lt = self.forward(xt)
        ce_t = F.cross_entropy(lt, yt)
        grads = _average_over_ranks(torch.autograd.grad(ce_t, self.w_params, allow_unused=True))
        for p, g in zip(self.w_params, grads, strict=True):
            p.grad = g
        self.w_opt.step()
        with torch.no_grad():
            m = torch.stack(
                [
                    ce_t.detach(),
                    100.0 * (lt.argmax(1) == yt).float().mean(),
                    ce_v.detach(),
                    100.0 * (lv.argmax(1) == yv).float().mean(),
                    obj.detach(),
                ]
            ).float()
            (avg,) = _average_over_ranks((m,))  # the global batch's means (equal shards)
        assert avg is not None
        return avg

    def entropy(self) -> float:
        """Current mean alpha entropy (the correct reading, whatever `official_entropy_bug` says)."""
        with torch.no_grad():
            return float(mean_entropy(*self._logits()))

    def _logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixing logits alpha / temperature of the supernet (the alphas themselves at temperature 1)."""
        t = self.net.temperature
        a, b = self.a_params
        return (a, b) if t == 1.0 else (a / t, b / t)

    def genotype(self, **kwargs: Any) -> Genotype:
        """The genotype derived from the current mixing weights softmax(alpha / temperature) (see
        :func:`derive_genotype`)."""
        return derive_genotype(*self._logits(), self.net.primitives, self.net.steps, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "w_opt": self.w_opt.state_dict(),
            "a_opt": self.a_opt.state_dict(),
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self.epoch = int(state["epoch"])


class _CapturedStep(NamedTuple):
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]  # static copies of (x_train, y_train, x_val, y_val)
    metrics: torch.Tensor
    key: tuple[torch.Size, ...]


def _average_over_ranks(tensors: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor | None, ...]:
    """Average tensors over the ranks of the default process group in one all-reduce (identity for one process).
    None entries (parameters outside this step's graph, the same on every rank) are passed through."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    present = [t for t in tensors if t is not None]
    flat = torch.cat([t.reshape(-1) for t in present])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    out: list[torch.Tensor | None] = []
    offset = 0
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        out.append(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return tuple(out)


def _cosine(base: float, eta_min: float, epoch: int, total: int) -> float:
    """Cosine annealing from `base` at epoch 0 to `eta_min` at epoch `total` (torch's CosineAnnealingLR closed form)."""
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * epoch / total)) / 2


@register_searcher
def bnas(supernet: SuperNet, **kwargs: Any) -> BnasSearcher:
    """The BNAS searcher (first-order bilevel, entropy-regularised)."""
    return BnasSearcher(supernet, **kwargs)
