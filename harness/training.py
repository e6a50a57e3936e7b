"""`bnas train`: one run from a resolved config: data, model, engine, checkpoints, resume, metrics and tracking.

Run-folder contents (`runs/<dataset>/<method>/seed<k>/`): `config.yaml` (resolved config), `checkpoint.pt` (every
epoch, atomic), `history.csv` (per-epoch metrics), `metrics.json` (final metrics), `model.pt` (final weights).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.utils import distribute_bn
from torch import nn

from harness.checkpoint import load_state, load_tensors, rng_state, save_tensors, set_rng_state
from harness.config import Config, load_config
from harness.costs import profile_model
from harness.data import build_loaders
from harness.distributed import Runtime, all_gather_objects, setup_runtime, teardown_runtime
from harness.engine import (
    BinaryStats,
    DropPathSchedule,
    Hook,
    TrainLoss,
    WeightConstraints,
    autocast_dtype,
    build_loss,
    build_optimizer,
    build_scheduler,
    check_optimizer,
    train_one_epoch,
    unwrap,
    validate,
)
from harness.errors import CheckpointError, ConfigError
from harness.feature_losses import BayesFeatureLossHook, CenterLossHook
from harness.io import atomic_write_json
from harness.kernel_losses import BayesKernelLossHook, ProjectionLossHook
from harness.models import count_params, create_model
from harness.run import PERF_PREFIX, RunLifecycle, make_tracker, numeric, peak_memory_mb, run_tags
from methods.binary import BinaryConv2d
from methods.binary.duo import decouple

__all__ = [
    "fit",
    "run_train",
    "run_evaluate",
    "precision",
    "batch_deviation",
]

log = logging.getLogger(__name__)


def precision(tc: Any, device: torch.device) -> str:
    """The arithmetic a run trains in: 'bf16'/'fp16' under autocast (train.amp on CUDA, train.cpu_amp on CPU), else
    'fp32' (the release's precision for search, CIFAR and ImageNet training)."""
    dtype = autocast_dtype(tc, device)
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def batch_deviation(tc: Any) -> str:
    """'' when the run's global batch is its recipe's, else a note saying how it differs."""
    if tc.recipe and tc.recipe_batch_size and tc.recipe_batch_size != tc.batch_size:
        return f"global batch {tc.batch_size}, recipe {tc.recipe} says {tc.recipe_batch_size}"
    return ""


def _final_metrics(history: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    last = history[-1]
    evals = [r for r in history if "val/top1" in r]
    out = {k: v for k, v in last.items() if not k.startswith(PERF_PREFIX)}
    if evals:
        out.update({k: evals[-1][k] for k in ("val/top1", "val/top5", "val/loss")})
        out[f"{PERF_PREFIX}val_img_s"] = evals[-1][f"{PERF_PREFIX}val_img_s"]
    # the mean over epochs under its own name: the per-epoch `perf/train_img_s` is in the history (and in MLflow)
    out[f"{PERF_PREFIX}mean_train_img_s"] = sum(r[f"{PERF_PREFIX}train_img_s"] for r in history) / len(history)
    out[f"{PERF_PREFIX}train_s"] = sum(r[f"{PERF_PREFIX}epoch_s"] for r in history)
    out.update(extra)
    return out


def _run_facts(model: nn.Module, tc: Any, rt: Runtime) -> dict[str, Any]:
    """What the final metrics say about the run itself: epochs, parameters, processes, peak memory."""
    return {
        "epochs": tc.epochs,
        "params": count_params(unwrap(model)),
        "world_size": rt.world_size,
        f"{PERF_PREFIX}peak_mem_mb": peak_memory_mb(rt.device),
    }


def _place(model: nn.Module, tc: Any, rt: Runtime) -> nn.Module:
    """The model on the run's device, channels-last and compiled (in place: state_dict keys unchanged) if asked."""
    model = model.to(rt.device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if tc.compile:
        model.compile()
    return model


def _run_hooks(
    model: nn.Module, tc: Any, hooks: Sequence[Hook], rt: Runtime, optimizer: torch.optim.Optimizer
) -> list[Hook]:
    """The caller's hooks, then those the config and the model ask for: drop-path schedule, weight clipping of the
    binary layers that declare it, binary statistics, the center loss, PCNN's projection loss, BONN's losses."""
    out = list(hooks)
    if tc.drop_path > 0:
        out.append(DropPathSchedule(tc.drop_path))
    constraints = WeightConstraints(model)
    if constraints.modules:
        out.append(constraints)
    if tc.binary_stats:
        stats = BinaryStats(model)
        if stats.stats:
            out.append(stats)
    if tc.center_loss > 0:
        out.append(CenterLossHook(unwrap(model), tc.num_classes, tc.center_loss, tc.center_lr, rt))
    if tc.projection_loss > 0:
        out.append(ProjectionLossHook(unwrap(model), tc.projection_loss, optimizer, rt))
    if tc.bayes_kernel_loss > 0:
        out.append(BayesKernelLossHook(unwrap(model), tc.bayes_kernel_loss, tc.bayes_kernel_prior))
    if tc.bayes_feature_loss > 0:
        out.append(BayesFeatureLossHook(unwrap(model), tc.num_classes, tc.bayes_feature_loss, tc.center_lr, rt))
    return out


@dataclass
class _Optimisation:
    """What an epoch updates besides the weights: optimizer, per-iteration scheduler, fp16 loss scaler."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None

    @classmethod
    def build(cls, tc: Any, model: nn.Module, updates_per_epoch: int, rt: Runtime) -> _Optimisation:
        optimizer = build_optimizer(tc, model)
        fp16 = tc.amp and tc.amp_dtype == "float16" and rt.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda") if fp16 else None
        return cls(optimizer, build_scheduler(tc, optimizer, updates_per_epoch), scaler)

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
        }


def _hook_keys(hooks: Sequence[Hook]) -> dict[str, Hook]:
    """Each hook under its class name and its index among hooks of that class (`CenterLossHook.0`): a checkpoint's
    hook states are matched by it, so a hook added or left out before another does not shift their states."""
    keys: dict[str, Hook] = {}
    seen: dict[str, int] = {}
    for h in hooks:
        name = type(h).__name__
        keys[f"{name}.{seen.get(name, 0)}"] = h
        seen[name] = seen.get(name, 0) + 1
    return keys


def _restore(
    state: dict[str, Any], model: nn.Module, opt: _Optimisation, hooks: Sequence[Hook], rt: Runtime, path: Path
) -> int:
    """Load a resumable checkpoint into the model, optimisation, hooks and this rank's RNG; returns the global step.

    Raises:
        CheckpointError: its tensors or states do not fit this run.
    """
    load_state(model, state["model"], path)
    try:
        opt.optimizer.load_state_dict(state["optimizer"])
        opt.scheduler.load_state_dict(state["scheduler"])
        if opt.scaler is not None and state.get("scaler"):
            opt.scaler.load_state_dict(state["scaler"])
        saved = state.get("hooks", {})
        for key, h in _hook_keys(hooks).items():
            if key in saved:
                h.load_state_dict(saved[key])
        rngs = state.get("rng", [])
        if len(rngs) == rt.world_size:
            set_rng_state(rngs[rt.rank])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: does not fit this run ({str(e).splitlines()[0]})") from None
    return int(state["global_step"])


def _epoch(
    model: nn.Module,
    loaders: tuple[Any, Any],
    opt: _Optimisation,
    loss_fn: TrainLoss,
    tc: Any,
    rt: Runtime,
    hooks: Sequence[Hook],
    epoch: int,
    global_step: int,
    progress: bool,
) -> tuple[dict[str, Any], int]:
    """Train one epoch, then validate when `train.eval_interval` (or the last epoch) says so: (history row, step)."""
    train_loader, val_loader = loaders
    train_loader.set_epoch(epoch)
    for h in hooks:
        h.on_epoch_start(unwrap(model), epoch, tc.epochs)
    tm, global_step = train_one_epoch(
        model,
        train_loader,
        opt.optimizer,
        opt.scheduler,
        loss_fn,
        tc,
        rt,
        epoch=epoch,
        global_step=global_step,
        hooks=hooks,
        scaler=opt.scaler,
        progress=progress and rt.is_main,
    )
    if rt.distributed:  # BN running stats drift apart per rank: average them before eval and checkpoint
        distribute_bn(unwrap(model), rt.world_size, reduce=True)
    row: dict[str, Any] = {"epoch": epoch + 1, **tm}
    for h in hooks:
        row.update(h.epoch_metrics())
    if (epoch + 1) % tc.eval_interval == 0 or epoch + 1 == tc.epochs:
        row.update(validate(unwrap(model), val_loader, tc, rt))
    return row, global_step


def _checkpoint_state(
    model: nn.Module, opt: _Optimisation, hooks: Sequence[Hook], global_step: int, rt: Runtime
) -> dict:
    """What checkpoint.pt holds besides the run's bookkeeping: weights, optimisation, hooks, every rank's RNG."""
    rngs = all_gather_objects(rng_state(), rt)  # a collective: every rank calls it
    return {
        "model": unwrap(model).state_dict(),
        **opt.state_dict(),
        "hooks": {key: h.state_dict() for key, h in _hook_keys(hooks).items()},
        "rng": rngs,
        "global_step": global_step,
    }


def fit(
    cfg: Config,
    model: nn.Module,
    train_loader: Any,
    val_loader: Any,
    out: str | Path,
    rt: Runtime,
    *,
    resume: bool = False,
    hooks: Sequence[Hook] = (),
    tracker: Any = None,
    run_name: str = "run",
    experiment: str = "bnas",
    tags: dict[str, Any] | None = None,
    progress: bool = False,
    extra_metrics: dict[str, Any] | None = None,
    teacher: nn.Module | None = None,
) -> dict[str, Any]:
    """Train `model` for `cfg.train.epochs`, checkpointing every epoch; resume from `out/checkpoint.pt` if asked
    (a checkpoint of another config or code is kept as `checkpoint.stale.pt`: see :class:`harness.run.RunLifecycle`).
    With a `teacher` (frozen, real-valued), the loss distils from it (:class:`harness.engine.TrainLoss`).

    Returns:
        The final metrics (also written to `out/metrics.json`).
    """
    tc = cfg.train
    model = _place(model, tc, rt)
    opt = _Optimisation.build(tc, model, len(train_loader), rt)
    hooks = _run_hooks(model, tc, hooks, rt, opt.optimizer)
    loss_fn = build_loss(tc, None if teacher is None else _place(teacher, tc, rt))
    run = RunLifecycle(cfg, out, rt, experiment=experiment, run_name=run_name, tags=tags or {}, tracker=tracker)
    start_epoch, global_step = 0, 0
    state = run.resumable_state(resume, map_location=rt.device)
    if state is not None:
        global_step, start_epoch = _restore(state, model, opt, hooks, rt, run.checkpoint_path), int(state["epoch"])
    if rt.distributed:
        ddp_kw: dict[str, Any] = {"device_ids": [rt.device.index]} if rt.device.type == "cuda" else {}
        model = nn.parallel.DistributedDataParallel(model, **ddp_kw)
    run.start()
    with run:
        for epoch in range(start_epoch, tc.epochs):
            loaders = (train_loader, val_loader)
            row, global_step = _epoch(model, loaders, opt, loss_fn, tc, rt, hooks, epoch, global_step, progress)
            run.end_epoch(row, _checkpoint_state(model, opt, hooks, global_step, rt))
            if rt.is_main:
                log.info(
                    "epoch %d/%d %s", epoch + 1, tc.epochs, " ".join(f"{k}={v:.4g}" for k, v in numeric(row).items())
                )
            for h in hooks:
                h.on_epoch_end(unwrap(model), epoch)
        if not run.history:
            raise CheckpointError(f"{out}: train.epochs = {tc.epochs}: nothing to train")
        run.write_history()  # a resume of a finished run (its outputs removed, e.g. by DVC) writes them all again
        metrics = _final_metrics(run.history, {**_run_facts(model, tc, rt), **(extra_metrics or {})})
        if rt.is_main:
            save_tensors(unwrap(model).state_dict(), Path(out) / "model.pt")
        run.finish(metrics, ("config.yaml", "metrics.json", "history.csv"))
        return metrics


def load_weights(
    model: nn.Module,
    path: str | Path,
    *,
    what: str = "the model.pt of a finished run",
    skip_binary: bool = False,
) -> None:
    """Load a `model.pt` (weights only) into `model`, e.g. stage 1 of a two-stage recipe into stage 2; `what` names
    the file in errors (e.g. `train.init_from`). `skip_binary` keeps the latent weights of the binary-weight convs at
    their init (`train.official_init_skips_binary`: the ReActNet-A release's step 2, whose binary convs store their
    weights under another name, so its non-strict load silently skips them).

    Raises:
        CheckpointError: the file is missing, corrupt, or its tensors do not fit the model.
    """
    state = load_tensors(path, what=what)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a full checkpoint.pt
    keep = binary_weight_keys(model) if skip_binary else frozenset()
    load_state(model, state, path, keep_init=keep)


def load_init(model: nn.Module, tc: Any) -> None:
    """Initialise `model` from `train.init_from` (the previous stage of a multi-stage recipe): as it is, without the
    binary convs' latent weights (`official_init_skips_binary`), or decoupled first (`init_decouple`: the file holds
    the coupled BinaryDuo network, rebuilt with `decoupled: false`, loaded, decoupled, then copied into `model`).

    Raises:
        CheckpointError: the file is missing, corrupt, or does not fit (the coupled twin, with `init_decouple`).
        ConfigError: `init_decouple` on a model that has no coupled form.
    """
    what = "train.init_from: the model.pt of a finished run"
    if not tc.init_decouple:
        load_weights(model, tc.init_from, what=what, skip_binary=tc.official_init_skips_binary)
        return
    if not tc.model_kwargs.get("decoupled"):
        raise ConfigError("train.init_decouple: needs train.model_kwargs.decoupled: true (a decoupled BinaryDuo model)")
    coupled = create_model(tc.model, tc.num_classes, **{**tc.model_kwargs, "decoupled": False})
    load_weights(coupled, tc.init_from, what=what + " (the coupled network)")
    decouple(coupled)
    load_state(model, coupled.state_dict(), tc.init_from)


def binary_weight_keys(model: nn.Module) -> frozenset[str]:
    """The state-dict keys of the latent weights of every conv with binary weights."""
    return frozenset(f"{n}.weight" for n, m in model.named_modules() if isinstance(m, BinaryConv2d) and m.binary_weight)


def build_teacher(tc: Any) -> nn.Module | None:
    """The frozen real-valued teacher of `train.teacher` with `train.teacher_weights` (None without a teacher).

    Raises:
        ConfigError: a teacher without weights, or "pretrained" weights timm cannot load (offline: not cached).
        CheckpointError: the teacher's model.pt is missing, corrupt or of another model.
    """
    if not tc.teacher:
        return None
    if not tc.teacher_weights:
        raise ConfigError(
            f"train.teacher {tc.teacher!r}: needs train.teacher_weights (the model.pt of a finished `bnas train` run "
            f"of that model, or 'pretrained' for timm's weights)"
        )
    if tc.teacher_weights == "pretrained":
        try:
            return timm.create_model(tc.teacher, pretrained=True, num_classes=tc.num_classes, **tc.teacher_kwargs)
        except Exception as e:  # noqa: BLE001  (timm/hub errors vary: offline, unknown tag, no weights)
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"train.teacher_weights: pretrained {tc.teacher} could not be loaded ({first})") from None
    teacher = create_model(tc.teacher, tc.num_classes, **tc.teacher_kwargs)
    try:
        load_weights(teacher, tc.teacher_weights, what="train.teacher_weights: the model.pt of the teacher's run")
    except CheckpointError as e:
        msg = str(e)
        raise CheckpointError(msg if msg.startswith("train.") else f"train.teacher_weights: {msg}") from None
    return teacher


def model_costs(model: nn.Module, meta: dict[str, Any], cfg: Config) -> dict[str, float]:
    """The model's cost figures (`cost/*`) at the dataset's input size under `train.cost_policy`."""
    size = 32 if meta.get("dataset") == "cifar10" else cfg.data.image_size
    try:
        p = profile_model(model, (3, size, size), cfg.train.cost_policy)
    except ValueError as e:
        raise ConfigError(f"train.cost_policy: {e}") from None
    return {
        "cost/ops": p.ops,
        "cost/flops": float(p.flops),
        "cost/bops": float(p.bops),
        "cost/params_binary": float(p.params_binary),
        "cost/params_real": float(p.params_real),
        "cost/memory_mbit": p.memory_bits / 1e6,
    }


def run_train(
    cfg: Config,
    data: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    method: str | None = None,
    stage: str = "train",
    hooks: Sequence[Hook] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Set up the runtime (torchrun/DDP aware), build loaders and model, and :func:`fit` them."""
    check_optimizer(cfg.train.opt)
    rt = setup_runtime(cfg.train.device)
    try:
        tc = cfg.train
        deviation = batch_deviation(tc)
        arith = precision(tc, rt.device)
        if deviation and rt.is_main:
            log.warning("DIFFERENT RECIPE: %s (recorded as tag bnas.batch_deviation)", deviation)
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        train_loader, val_loader, meta = build_loaders(cfg, data, rt)
        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        model = create_model(tc.model, tc.num_classes, **tc.model_kwargs)
        if tc.init_from:
            load_init(model, tc)
        teacher = build_teacher(tc)
        torch.manual_seed(tc.seed + 1_000_003 * rt.rank)  # rank-specific dropout / drop-path streams
        costs = model_costs(model, meta, cfg)
        dataset = meta.get("dataset", "unknown")
        method = method or tc.model
        tags = run_tags(
            cfg,
            rt,
            method=method,
            stage=stage,
            seed=tc.seed,
            dataset=dataset,
            fingerprint=meta.get("fingerprint", "unknown"),
            precision=arith,
            extra={
                "bnas.model": tc.model,
                "bnas.cost_policy": tc.cost_policy,
                "bnas.global_batch": tc.batch_size,
                "bnas.batch_deviation": deviation or "none",
            },
        )
        t0 = time.perf_counter()
        metrics = fit(
            cfg,
            model,
            train_loader,
            val_loader,
            out,
            rt,
            resume=resume,
            hooks=hooks,
            tracker=make_tracker(cfg, rt),
            run_name=f"{method}-s{tc.seed}-{stage}",
            experiment=f"{cfg.tracking.experiment_prefix}-{dataset}",
            tags=tags,
            extra_metrics={**costs, "precision": arith, "global_batch": tc.batch_size},
            progress=progress,
            teacher=teacher,
        )
        log.info("finished in %.1f s: val/top1 %.2f", time.perf_counter() - t0, metrics.get("val/top1", float("nan")))
        return metrics
    finally:
        teardown_runtime(rt)


def run_evaluate(run_dir: str | Path, data: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a finished run's `model.pt` (with its `config.yaml`) on the prepared dataset's evaluation split."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    model = create_model(cfg.train.model, cfg.train.num_classes, **cfg.train.model_kwargs)
    load_weights(model, run_dir / "model.pt", what="the trained weights of a finished `bnas train` run")
    rt = setup_runtime(cfg.train.device)
    try:
        _, val_loader, _ = build_loaders(cfg, data, rt)
        model = model.to(rt.device)
        metrics = validate(model, val_loader, cfg.train, rt)
        if out is not None and rt.is_main:
            atomic_write_json(out, metrics)
        return metrics
    finally:
        teardown_runtime(rt)
