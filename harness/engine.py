"""The training loop shared by every model: timm optimizers/schedulers/losses, hooks, AMP, DDP, top-1/top-5.

Shaped like timm's `train.py` (`train_one_epoch()`, `validate()`), with hooks around forward/backward/step so that a
method can transform weights without its own loop (e.g. a hook that binarises latent weights before the forward pass,
restores them after the backward pass and rescales their gradient).

The BNAS networks' XNOR binarisation (docs/bnas.md §1.2) needs no hook: it happens inside their binary convs' weight
quantizers (:class:`methods.binary.quantizers.XnorWeight`): the latent weights are centred and clamped in place at the
first forward of each iteration and of each evaluation pass (the engine schedules it), and their gradient is rescaled
inside autograd. The gradient clip (`train.clip_grad`, BNAS ImageNet: 5) still measures the norm the release's clip
measures, that of the gradients before the rescale (:func:`clip_grad_norm_release_order`).
"""

from __future__ import annotations

import contextlib
import difflib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from timm.layers import DropPath
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from torch import nn
from tqdm import tqdm

from harness.config import TrainConfig
from harness.distributed import Runtime, all_reduce_sum
from harness.errors import ConfigError, NonFiniteLossError
from methods.binary import BinaryWeightStats
from methods.binary.projection import projection_params
from methods.binary.quantizers import XnorWeight, schedule_xnor_prep, xnor_rescaled_weights

__all__ = [
    "Hook",
    "DropPathSchedule",
    "WeightConstraints",
    "BinaryStats",
    "IterScheduler",
    "check_optimizer",
    "build_optimizer",
    "build_scheduler",
    "build_loss",
    "autocast",
    "autocast_dtype",
    "clip_grad_norm_release_order",
    "evaluate",
    "train_one_epoch",
    "validate",
    "unwrap",
]


class Hook:
    """Callbacks around the training step; every method is a no-op by default.

    Order within a step: `before_forward` -> forward, loss (plus each hook's `loss` term), backward -> (unscale,
    clip) -> `after_backward` -> optimizer step -> `after_step`. So the clip sees the gradients before whatever
    `after_backward` does to them (a hook-side rescale happens after the clip, as in the BNAS release); a rescale
    inside autograd (the XNOR quantizers' "xnor_rescale") is undone for the norm by
    :func:`clip_grad_norm_release_order`. `on_epoch_start` runs before each epoch, `on_epoch_end` after its checkpoint.
    """

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        """Called before epoch `epoch` (0-based) of `epochs`."""

    def before_forward(self, model: nn.Module) -> None:
        """Called before each training forward pass (e.g. binarise latent weights)."""

    def loss(self, model: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """A term added to the training loss of the batch (after the forward, inside its autocast), or None."""
        return None

    def after_backward(self, model: nn.Module) -> None:
        """Called after the backward pass and the clip, before the optimizer step (e.g. restore latent weights,
        rescale gradients)."""

    def after_step(self, model: nn.Module) -> None:
        """Called after each optimizer step."""

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        """Called after epoch `epoch` has been checkpointed and logged."""

    def epoch_metrics(self) -> dict[str, float]:
        """Metrics this hook adds to the epoch's history row (called after the epoch's training pass)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """State to keep in checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class DropPathSchedule(Hook):
    """Linear drop-path ramp p(epoch) = p_max * epoch / epochs (DARTS/BNAS CIFAR recipe, docs/bnas.md §5.3).

    Sets `model.drop_path_prob` when the model has it (DARTS-style cells) and the `drop_prob` of every timm
    `DropPath` module.
    """

    def __init__(self, p_max: float) -> None:
        self.p_max = p_max

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        p = self.p_max * epoch / max(epochs, 1)
        if hasattr(model, "drop_path_prob"):  # the BNAS networks' cell-level drop-path
            setattr(model, "drop_path_prob", p)  # noqa: B010
        for m in model.modules():
            if isinstance(m, DropPath):
                m.drop_prob = p


class WeightConstraints(Hook):
    """Applies every module's `constrain()` after each optimizer step (e.g. BinaryNet's latent-weight clipping)."""

    def __init__(self, model: nn.Module) -> None:
        self.modules: list[Any] = [m for m in model.modules() if callable(getattr(m, "constrain", None))]

    def after_step(self, model: nn.Module) -> None:
        for m in self.modules:
            m.constrain()


class BinaryStats(Hook):
    """Logs the binary weights' flip ratio (fraction of signs changed per step) and latent saturation (|W| >= 1).

    The flip ratio is sampled on the first step of each epoch and every `every` steps, to keep the cost negligible.
    """

    def __init__(self, model: nn.Module, every: int = 10) -> None:
        self.stats = BinaryWeightStats(model)
        self.every, self.step = every, 0
        self._armed = self._first = False

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        self._first = True  # every epoch gets at least one sample

    def after_backward(self, model: nn.Module) -> None:
        self._armed = self.step % self.every == 0 or self._first
        self._first = False
        if self._armed:
            self.stats.snapshot()

    def after_step(self, model: nn.Module) -> None:
        if self._armed:
            self.stats.update()
        self.step += 1

    def epoch_metrics(self) -> dict[str, float]:
        return self.stats.summary()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}  # the sampling phase survives a resume

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))


class IterScheduler:
    """A learning-rate schedule stepped once per optimizer update (timm scheduler or torch OneCycleLR)."""

    def __init__(self, sched: Any, kind: str) -> None:
        self.sched = sched
        self.kind = kind

    def step(self, num_updates: int) -> None:
        """Advance to `num_updates` completed updates."""
        if self.sched is None:
            return
        if self.kind == "onecycle":
            if self.sched.last_epoch + 1 < self.sched.total_steps:
                self.sched.step()
        elif self.kind == "torch":  # a torch scheduler stepped once per update
            self.sched.step()
        else:
            self.sched.step_update(num_updates=num_updates)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.sched is None else self.sched.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.sched is not None:
            self.sched.load_state_dict(state)


def check_optimizer(name: str) -> None:
    """Raise ConfigError unless `name` is an optimizer timm's factory knows (with the closest names)."""
    known = [str(n) for n in list_optimizers()]
    if name.lower() not in known:
        close = difflib.get_close_matches(name.lower(), known, n=3)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ConfigError(f"train.opt: unknown optimizer '{name}' (expected a timm optimizer name{hint})")


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer factory with the run's lr, momentum and weight decay. With `projection_lr_scale` != 1, PCNN's
    projection matrices move to groups of their own at lr x that scale (their own lr, Gu et al. 2019); every
    schedule scales each group from its own initial lr.

    Raises:
        ConfigError: `projection_lr_scale` != 1 for a model without projection matrices.
    """
    kwargs: dict[str, Any] = {}
    if cfg.opt in ("momentum", "sgd", "nesterov", "rmsprop", "rmsproptf"):
        kwargs["momentum"] = cfg.momentum
    optimizer = create_optimizer_v2(
        model,
        opt=cfg.opt,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        filter_bias_and_bn=cfg.filter_bias_and_bn,
        **kwargs,
    )
    if cfg.projection_lr_scale != 1.0:
        own = {id(p) for p in projection_params(model)}
        if not own:
            raise ConfigError(
                "train.projection_lr_scale: the model has no PCNN projection matrices (e.g. pcnn_resnet18)"
            )
        for group in list(optimizer.param_groups):
            moved = [p for p in group["params"] if id(p) in own]
            if moved:
                group["params"] = [p for p in group["params"] if id(p) not in own]
                rest = {k: v for k, v in group.items() if k != "params"}
                optimizer.add_param_group({**rest, "params": moved, "lr": group["lr"] * cfg.projection_lr_scale})
        optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    return optimizer


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, updates_per_epoch: int) -> IterScheduler:
    """The per-iteration schedule of the run.

    - `onecycle`: the BNAS CIFAR recipe (docs/bnas.md §5.3): lr/div -> lr -> lr/div over 2 x `onecycle_pct` of the
      steps, then down to lr/div/final_div; momentum 0.95 -> 0.85 -> 0.95. torch's three-phase linear OneCycleLR is
      exactly it.
    - `cosine`: timm cosine decay to `min_lr` with optional warm-up.
    - `cosine_restarts`: timm cosine with cycles of `restart_epochs` (BNAS ImageNet: T_0 = 50, eta_min = 0).
    - `multistep`: lr x `decay_rate` at each epoch of `decay_milestones` (BinaryDuo's and CBCN's step decays).
    - `linear`: timm poly schedule with power 1, a linear decay to `min_lr` (Bi-Real from-scratch recipe). With
      `official_lr_offset` (the ReActNet release): constant per epoch, lr (1 - (e + 1)/E) in epoch e = 0..E-1, so
      the last epoch trains at lr 0 (the release steps its per-epoch LambdaLR at the start of every epoch).
    - `constant`: no schedule.

    Raises:
        ConfigError: `official_lr_offset` with another schedule than `linear`; `multistep` without milestones.
    """
    total = cfg.epochs * updates_per_epoch
    if cfg.official_lr_offset:
        if cfg.sched != "linear":
            raise ConfigError(f"train.official_lr_offset: applies to train.sched linear, not {cfg.sched!r}")
        epochs, per_epoch = cfg.epochs, max(1, updates_per_epoch)
        offset = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0 - (it // per_epoch + 1) / epochs)
        return IterScheduler(offset, "torch")
    if cfg.sched == "multistep":  # torch's, over updates: the first update of each milestone epoch has the new lr
        if not cfg.decay_milestones:
            raise ConfigError("train.decay_milestones: sched multistep needs the epochs at which the lr decays")
        steps = [m * updates_per_epoch for m in cfg.decay_milestones]
        multistep = torch.optim.lr_scheduler.MultiStepLR(optimizer, steps, gamma=cfg.decay_rate)
        return IterScheduler(multistep, "torch")
    if cfg.sched == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],  # each group's own (cfg.lr unless a group scales it)
            total_steps=max(total, 2),
            pct_start=cfg.onecycle_pct,
            anneal_strategy="linear",
            cycle_momentum="momentum" in optimizer.defaults,
            base_momentum=0.85,
            max_momentum=0.95,
            div_factor=cfg.onecycle_div,
            final_div_factor=cfg.onecycle_final_div,
            three_phase=True,
        )
        return IterScheduler(sched, "onecycle")
    if cfg.sched == "constant":
        return IterScheduler(None, "constant")
    if cfg.sched == "linear":  # linear decay to min_lr (Bi-Real/ReActNet from-scratch recipes): timm poly, power 1
        sched, _ = create_scheduler_v2(
            optimizer,
            sched="poly",
            num_epochs=cfg.epochs,
            min_lr=cfg.min_lr,
            decay_rate=1.0,
            warmup_epochs=cfg.warmup_epochs,  # type: ignore[arg-type]  # timm takes fractional epochs
            step_on_epochs=False,
            updates_per_epoch=updates_per_epoch,
        )
    elif cfg.sched == "cosine":
        sched, _ = create_scheduler_v2(
            optimizer,
            sched="cosine",
            num_epochs=cfg.epochs,
            min_lr=cfg.min_lr,
            warmup_epochs=cfg.warmup_epochs,  # type: ignore[arg-type]  # timm takes fractional epochs
            step_on_epochs=False,
            updates_per_epoch=updates_per_epoch,
        )
    else:
        cycles = max(1, math.ceil(cfg.epochs / cfg.restart_epochs))
        sched, _ = create_scheduler_v2(
            optimizer,
            sched="cosine",
            num_epochs=cfg.restart_epochs,
            min_lr=cfg.min_lr,
            warmup_epochs=cfg.warmup_epochs,  # type: ignore[arg-type]  # timm takes fractional epochs
            cycle_limit=cycles,
            cycle_decay=1.0,
            step_on_epochs=False,
            updates_per_epoch=updates_per_epoch,
        )
    return IterScheduler(sched, cfg.sched)


class TrainLoss(nn.Module):
    """The training objective of a batch (logits, labels, inputs): the label loss, or distillation from a frozen
    real-valued teacher, ReActNet's distributional loss L = -sum_c p_teacher(c|x) log p_student(c|x) (Liu et al.,
    ECCV 2020, Sec. 3.3: the KL divergence up to the teacher's entropy), mixed as w L + (1 - w) label loss for a
    `distill_weight` w < 1 (ReActNet: w = 1, no label term)."""

    def __init__(self, label_loss: nn.Module, teacher: nn.Module | None = None, distill_weight: float = 1.0) -> None:
        super().__init__()
        self.label_loss = label_loss
        self.teacher = teacher
        self.distill_weight = distill_weight
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> TrainLoss:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # always: a teacher's BN keeps its statistics
        return self

    def forward(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            return self.label_loss(logits, y)
        with torch.no_grad():
            target = self.teacher(x).float().softmax(dim=1)
        distill = -(target * logits.float().log_softmax(dim=1)).sum(dim=1).mean()
        if self.distill_weight >= 1.0:
            return distill
        return self.distill_weight * distill + (1.0 - self.distill_weight) * self.label_loss(logits, y)


def build_loss(cfg: TrainConfig, teacher: nn.Module | None = None) -> TrainLoss:
    """Training loss: timm's LabelSmoothingCrossEntropy when smoothing > 0, else cross-entropy; distillation from
    `teacher` (set by `train.teacher`) with the share `train.distill_weight`."""
    label: nn.Module = nn.CrossEntropyLoss()
    if cfg.label_smoothing > 0:
        label = LabelSmoothingCrossEntropy(smoothing=cfg.label_smoothing)
    return TrainLoss(label, teacher, cfg.distill_weight)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run: `cfg.amp_dtype` on CUDA when `cfg.amp`, bf16 on CPU when `cfg.cpu_amp`, else
    None (float32, the release's precision)."""
    if cfg.amp and device.type == "cuda":
        return getattr(torch, cfg.amp_dtype)
    if cfg.cpu_amp and device.type == "cpu":
        return torch.bfloat16
    return None


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Autocast to :func:`autocast_dtype` when it is set; a null context otherwise (CPU runs stay float32, with the
    exact int8 forward of the binary convs)."""
    dtype = autocast_dtype(cfg, device)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def clip_grad_norm_release_order(
    model: nn.Module,
    params: Iterable[torch.Tensor],
    max_norm: float,
    *,
    rescaled: Sequence[tuple[torch.Tensor, Any]] | None = None,
) -> torch.Tensor:
    """`nn.utils.clip_grad_norm_(params, max_norm)` with the norm the BNAS release's clip measures.

    The release (train_imagenet.py) clips with `clip_grad_norm(model.parameters(), 5)` while its binarised conv
    weights hold W_b = alpha*sign(W), i.e. on g = dL/dW_b, and only then restores the latent weights and replaces g
    by XNOR-Net-PyTorch's rescaled gradient (`updateBinaryGradWeight`, docs/bnas.md §1.2). Here that rescale runs inside
    autograd (XnorWeight `grad="xnor_rescale"`), so `.grad` is already rescaled: a plain clip would see a norm 17-23x
    larger on a small BNAS-D (almost all of it the rescale's) and shrink every update accordingly. The rescale is
    linear in g, so clipping g by a factor and then rescaling equals rescaling and then scaling by that factor: this
    computes the total 2-norm over g of every such weight (recovered from its `.grad` by
    :meth:`XnorWeight.raw_grad`) and `.grad` of every other parameter, and multiplies ALL `.grad` by
    min(1, max_norm / (norm + 1e-6)) (torch's formula and kernels). Without such weights it is exactly
    `nn.utils.clip_grad_norm_`. Call it after the backward pass and after `GradScaler.unscale_`, with the latent
    weights as the forward saw them; the recovery is linear, so it applies as well to DDP-averaged gradients (every
    rank recovers the average of the ranks' g and takes the same clip factor).

    Args:
        model: the model holding the XNOR convs (a DDP wrapper works too).
        params: the parameters to clip.
        max_norm: the clip threshold.
        rescaled: `xnor_rescaled_weights(model)` computed once by the caller (else computed here).

    Returns:
        The total norm the clip used.
    """
    params = list(params)
    quantizer_of = {id(w): q for w, q in (xnor_rescaled_weights(model) if rescaled is None else rescaled)}
    grads = []
    for p in params:
        if p.grad is None:
            continue
        q = quantizer_of.get(id(p))
        grads.append(p.grad if q is None else q.raw_grad(p.detach(), p.grad))
    total = nn.utils.get_total_norm(grads, 2.0)
    nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def _topk_correct(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = min(5, logits.shape[1])
    hit = logits.topk(k, dim=1).indices == target[:, None]
    return hit[:, 0].sum(), hit.any(dim=1).sum()


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: IterScheduler,
    loss_fn: TrainLoss,
    cfg: TrainConfig,
    rt: Runtime,
    *,
    epoch: int,
    global_step: int,
    hooks: Sequence[Hook] = (),
    scaler: torch.amp.GradScaler | None = None,
    progress: bool = False,
) -> tuple[dict[str, float], int]:
    """One pass over `loader`. Returns the epoch's train metrics (averaged over ranks) and the new global step.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (checked every step on CPU, every `log_interval` on CUDA).
    """
    model.train()
    inner = unwrap(model)
    dev = rt.device
    sums = torch.zeros(3, dtype=torch.float64, device=dev)  # loss*n, correct@1, n
    check_every = 1 if dev.type == "cpu" else max(1, cfg.log_interval)
    params = [p for p in model.parameters() if p.requires_grad]
    xnor = [m for m in inner.modules() if isinstance(m, XnorWeight)]
    rescaled = xnor_rescaled_weights(inner) if cfg.clip_grad > 0 else []
    bar = None
    if progress:
        bar = tqdm(total=len(loader), desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    seen = 0
    for i, (x, y) in enumerate(loader):
        x = x.to(dev, non_blocking=True)
        y = y.to(dev, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for h in hooks:
            h.before_forward(inner)
        schedule_xnor_prep(xnor)  # centre + clamp the XNOR latent weights once, at this iteration's forward
        with autocast(cfg, dev):
            logits = model(x)
            loss = loss_fn(logits, y, x)
            for h in hooks:
                term = h.loss(inner, logits, y)
                if term is not None:
                    loss = loss + term
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if cfg.clip_grad > 0:  # on the gradients before the XNOR rescale, as the release (docs/bnas.md §1.2)
            clip_grad_norm_release_order(inner, params, cfg.clip_grad, rescaled=rescaled)
        for h in hooks:
            h.after_backward(inner)
        if (i + 1) % check_every == 0 or i + 1 == len(loader):  # type: ignore[arg-type]
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise NonFiniteLossError(
                    f"training loss became {lv} at epoch {epoch}, step {i} (global step {global_step + 1}); "
                    f"lower train.lr or enable train.clip_grad; the last checkpoint holds the previous epoch"
                )
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        global_step += 1
        scheduler.step(global_step)
        for h in hooks:
            h.after_step(inner)
        n = y.shape[0]
        seen += n
        with torch.no_grad():
            sums += torch.stack(
                [
                    loss.detach().double() * n,
                    (logits.argmax(1) == y).sum().double(),
                    torch.tensor(float(n), dtype=torch.float64, device=dev),
                ]
            )
        if bar is not None:
            if (i + 1) % max(1, cfg.log_interval) == 0 or i == 0:  # the postfix syncs with the device
                dt = time.perf_counter() - t0
                bar.set_postfix(
                    loss=f"{float(sums[0] / sums[2]):.3f}", img_s=f"{seen * rt.world_size / dt:.0f}", refresh=False
                )
            bar.update(1)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elapsed = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    all_reduce_sum(sums, rt)
    n_total = max(float(sums[2]), 1.0)
    return {
        "train/loss": float(sums[0]) / n_total,
        "train/top1": 100.0 * float(sums[1]) / n_total,
        "perf/train_img_s": n_total / elapsed,
        "lr": optimizer.param_groups[0]["lr"],
        "perf/epoch_s": elapsed,
    }, global_step


@torch.no_grad()
def evaluate(
    forward: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    rt: Runtime,
) -> dict[str, float]:
    """Top-1/top-5 accuracy (%), mean cross-entropy and throughput of `forward` (images -> logits) over `loader`,
    summed exactly over the ranks (each rank evaluates its shard). The caller sets the model's mode: every evaluation
    of the harness, of a trained network (:func:`validate`) or of a search's supernet, goes through here."""
    dev = rt.device
    sums = torch.zeros(4, dtype=torch.float64, device=dev)  # loss sum, top1, top5, n
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    t0 = time.perf_counter()
    for x, y in loader:
        x = x.to(dev, non_blocking=True)
        y = y.to(dev, non_blocking=True)
        logits = forward(x)
        c1, c5 = _topk_correct(logits, y)
        sums += torch.stack(
            [
                loss_fn(logits.float(), y).double(),
                c1.double(),
                c5.double(),
                torch.tensor(float(y.shape[0]), dtype=torch.float64, device=dev),
            ]
        )
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elapsed = time.perf_counter() - t0
    all_reduce_sum(sums, rt)
    n = max(float(sums[3]), 1.0)
    return {
        "val/loss": float(sums[0]) / n,
        "val/top1": 100.0 * float(sums[1]) / n,
        "val/top5": 100.0 * float(sums[2]) / n,
        "val/n": float(sums[3]),
        "perf/val_img_s": n / elapsed,
    }


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    cfg: TrainConfig,
    rt: Runtime,
) -> dict[str, float]:
    """:func:`evaluate` of a trained network in eval mode, under the run's autocast. The XNOR latent weights are
    centred and clamped once, at the pass's first batch (the release's `infer`)."""
    model.eval()
    schedule_xnor_prep(model)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with autocast(cfg, rt.device):
            return model(x)

    return evaluate(forward, loader, rt)
