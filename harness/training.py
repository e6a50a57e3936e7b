"""`bnas train`: one run from a resolved config: data, model, engine, checkpoints, resume, metrics and tracking.

Run-folder contents (`runs/<dataset>/<method>/seed<k>/`): `config.yaml` (resolved config), `checkpoint.pt` (every
epoch, atomic), `history.csv` (per-epoch metrics), `metrics.json` (final metrics), `model.pt` (final weights).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.checkpoint import load_checkpoint, load_state, load_tensors, rng_state, save_checkpoint, set_rng_state
from harness.config import Config, config_to_dict, flatten, save_config
from harness.data import CifarLoader, imagenet_loaders, load_cifar10, stratified_subset
from harness.distributed import Runtime, all_gather_objects, setup_runtime, teardown_runtime
from harness.engine import (
    BinaryStats,
    DropPathSchedule,
    Hook,
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
from harness.errors import CheckpointError, ConfigError, DataError
from harness.io import atomic_path, atomic_write_json, atomic_write_text
from harness.models import count_params, create_model

__all__ = [
    "build_loaders",
    "fit",
    "run_train",
    "run_evaluate",
    "peak_memory_mb",
    "code_digest",
    "per_process_batch",
    "precision",
    "batch_deviation",
    "PERF_PREFIX",
]

log = logging.getLogger(__name__)

PERF_PREFIX = "perf/"  # timing/memory metrics: they differ between identical runs, unlike the accuracy metrics


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: max allocated CUDA memory on GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _read_meta(data: Path) -> dict[str, Any]:
    meta_path = data / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{data}: not a prepared dataset (meta.json missing); run `bnas prepare` first")
    try:
        return json.loads(meta_path.read_text())
    except ValueError as e:
        raise DataError(f"{meta_path}: corrupt ({e}); re-run `bnas prepare`") from None


def build_loaders(cfg: Config, data: str | Path, rt: Runtime) -> tuple[Any, Any, dict[str, Any]]:
    """Train and evaluation loaders for the prepared dataset at `data` (CIFAR-10 cache or ImageNet manifest)."""
    data = Path(data)
    meta = _read_meta(data)
    tc, dc = cfg.train, cfg.data
    cl = tc.channels_last
    batch = per_process_batch(tc.batch_size, rt.world_size)
    if meta.get("dataset") == "cifar10":
        ds = load_cifar10(data)
        tr_idx = torch.from_numpy(stratified_subset(ds.train_y.numpy(), dc.train_subset, dc.split_seed))
        te_idx = torch.from_numpy(stratified_subset(ds.test_y.numpy(), dc.test_subset, dc.split_seed))
        dev = rt.device if dc.on_device else torch.device("cpu")
        common = {"seed": tc.seed, "device": dev, "rank": rt.rank, "world_size": rt.world_size, "channels_last": cl}
        train = CifarLoader(ds.train_x[tr_idx], ds.train_y[tr_idx], batch, train=True, augment=dc.augment, **common)
        val = CifarLoader(ds.test_x[te_idx], ds.test_y[te_idx], max(batch, 256), train=False, **common)
        meta = dict(meta, train_used=len(tr_idx), test_used=len(te_idx))
    elif meta.get("dataset") == "imagenet":
        train, val, meta = imagenet_loaders(
            data,
            dc,
            batch,
            seed=tc.seed,
            rank=rt.rank,
            world_size=rt.world_size,
            pin_memory=rt.device.type == "cuda",
        )
    else:
        raise DataError(f"{data}/meta.json: unknown dataset {meta.get('dataset')!r}; expected cifar10 or imagenet")
    n_cls = len(meta.get("classes", []))
    if n_cls and tc.num_classes < n_cls:
        raise DataError(f"{data}: {n_cls} classes but train.num_classes = {tc.num_classes}")
    return train, val, meta


def per_process_batch(global_batch: int, world_size: int) -> int:
    """Each process's share of the global `train.batch_size`.

    Raises:
        ConfigError: the global batch is not divisible by the number of processes.
    """
    if global_batch % world_size:
        raise ConfigError(
            f"train.batch_size {global_batch} (global) is not divisible by the {world_size} processes; "
            f"use a multiple of {world_size}"
        )
    return global_batch // world_size


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


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    atomic_write_text(path, buf.getvalue())


def code_digest() -> str:
    """sha256 (16 hex digits) of the harness and methods source files: a checkpoint from other code is not resumed."""
    import hashlib

    import methods

    h = hashlib.sha256()
    for pkg in (Path(__file__).parent, Path(methods.__file__).parent):
        for f in sorted(pkg.rglob("*.py")):
            h.update(f.relative_to(pkg.parent).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    fa, fb = flatten(a), flatten(b)
    return [f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}" for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


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
) -> dict[str, Any]:
    """Train `model` for `cfg.train.epochs`, checkpointing every epoch; resume from `out/checkpoint.pt` if asked.

    A checkpoint made with a different config is never silently reused: it is renamed to `checkpoint.stale.pt`
    (with a warning naming the differing keys) and the run starts afresh.

    Returns:
        The final metrics (also written to `out/metrics.json`).
    """
    from harness.tracking import NullTracker

    tc = cfg.train
    out = Path(out)
    ckpt_path = out / "checkpoint.pt"
    cfg_dict = config_to_dict(cfg)
    digest = code_digest()
    model = model.to(rt.device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if tc.compile:  # in place: state_dict keys unchanged
        model.compile()
    hooks = list(hooks)
    if tc.drop_path > 0:
        hooks.append(DropPathSchedule(tc.drop_path))
    constraints = WeightConstraints(model)
    if constraints.modules:
        hooks.append(constraints)
    if tc.binary_stats:
        stats = BinaryStats(model)
        if stats.stats:
            hooks.append(stats)
    optimizer = build_optimizer(tc, model)
    scheduler = build_scheduler(tc, optimizer, len(train_loader))
    loss_fn = build_loss(tc)
    scaler = (
        torch.amp.GradScaler("cuda") if (tc.amp and tc.amp_dtype == "float16" and rt.device.type == "cuda") else None
    )

    start_epoch, global_step, history, run_id = 0, 0, [], None
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=rt.device)
        diff = _config_diff(state.get("config", {}), cfg_dict)
        if state.get("code_digest") != digest:
            diff.append(f"code: {state.get('code_digest')} -> {digest}")
        if diff:
            log.warning(
                "%s was made with a different config (%s); keeping it as checkpoint.stale.pt and starting afresh",
                ckpt_path,
                "; ".join(diff[:5]),
            )
            if rt.distributed:
                torch.distributed.barrier()
            if rt.is_main:
                os.replace(ckpt_path, out / "checkpoint.stale.pt")
        else:
            load_state(model, state["model"], ckpt_path)
            try:
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                if scaler is not None and state.get("scaler"):
                    scaler.load_state_dict(state["scaler"])
                for h, hs in zip(hooks, state.get("hooks", []), strict=False):
                    h.load_state_dict(hs)
                rngs = state.get("rng", [])
                if len(rngs) == rt.world_size:
                    set_rng_state(rngs[rt.rank])
            except (KeyError, RuntimeError, ValueError) as e:
                raise CheckpointError(f"{ckpt_path}: does not fit this run ({str(e).splitlines()[0]})") from None
            start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
            history, run_id = list(state.get("history", [])), state.get("mlflow_run_id")
            log.info("resuming from %s at epoch %d", ckpt_path, start_epoch)
    if rt.distributed:
        ddp_kw = {"device_ids": [rt.device.index]} if rt.device.type == "cuda" else {}
        model = nn.parallel.DistributedDataParallel(model, **ddp_kw)

    tracker = tracker if (tracker is not None and rt.is_main) else NullTracker()
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    run_id = tracker.start(
        experiment=experiment, run_name=run_name, tags=tags or {}, params=flatten(cfg_dict), run_id=run_id
    )
    status = "FAILED"
    try:
        for epoch in range(start_epoch, tc.epochs):
            train_loader.set_epoch(epoch)
            for h in hooks:
                h.on_epoch_start(unwrap(model), epoch, tc.epochs)
            tm, global_step = train_one_epoch(
                model,
                train_loader,
                optimizer,
                scheduler,
                loss_fn,
                tc,
                rt,
                epoch=epoch,
                global_step=global_step,
                hooks=hooks,
                scaler=scaler,
                progress=progress and rt.is_main,
            )
            if rt.distributed:  # BN running stats drift apart per rank: average them before eval and checkpoint
                from timm.utils import distribute_bn

                distribute_bn(unwrap(model), rt.world_size, reduce=True)
            row: dict[str, Any] = {"epoch": epoch + 1, **tm}
            for h in hooks:
                row.update(h.epoch_metrics())
            if (epoch + 1) % tc.eval_interval == 0 or epoch + 1 == tc.epochs:
                row.update(validate(unwrap(model), val_loader, tc, rt, hooks))
            history.append(row)
            rngs = all_gather_objects(rng_state(), rt)
            if rt.is_main:
                save_checkpoint(
                    {
                        "model": unwrap(model).state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict() if scaler else {},
                        "hooks": [h.state_dict() for h in hooks],
                        "rng": rngs,
                        "epoch": epoch + 1,
                        "global_step": global_step,
                        "history": history,
                        "config": cfg_dict,
                        "code_digest": digest,
                        "mlflow_run_id": run_id,
                    },
                    ckpt_path,
                )
                _write_history(out / "history.csv", history)
                tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
                log.info(
                    "epoch %d/%d %s",
                    epoch + 1,
                    tc.epochs,
                    " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"),
                )
            for h in hooks:
                h.on_epoch_end(unwrap(model), epoch)
        if not history:
            raise CheckpointError(f"{out}: train.epochs = {tc.epochs}: nothing to train")
        if rt.is_main:  # a resume of a finished run (its outputs removed, e.g. by DVC) writes them all again
            _write_history(out / "history.csv", history)
        metrics = _final_metrics(
            history,
            {
                "epochs": tc.epochs,
                "params": count_params(unwrap(model)),
                "world_size": rt.world_size,
                f"{PERF_PREFIX}peak_mem_mb": peak_memory_mb(rt.device),
                **(extra_metrics or {}),
            },
        )
        if rt.is_main:
            with atomic_path(out / "model.pt") as tmp:
                torch.save(unwrap(model).state_dict(), tmp)
            atomic_write_json(out / "metrics.json", metrics)
            tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=tc.epochs)
            for name in ("config.yaml", "metrics.json", "history.csv"):
                tracker.log_artifact(out / name)
        status = "FINISHED"
        return metrics
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end(status)


def load_weights(model: nn.Module, path: str | Path, *, what: str = "the model.pt of a finished run") -> None:
    """Load a `model.pt` (weights only) into `model`, e.g. stage 1 of a two-stage recipe into stage 2; `what` names
    the file in errors (e.g. `train.init_from`).

    Raises:
        CheckpointError: the file is missing, corrupt, or its tensors do not fit the model.
    """
    state = load_tensors(path, what=what)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a full checkpoint.pt
    load_state(model, state, path)


def model_costs(model: nn.Module, meta: dict[str, Any], cfg: Config) -> dict[str, float]:
    """The model's cost figures (`cost/*`) at the dataset's input size under `train.cost_policy`."""
    from harness.costs import profile_model

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
            load_weights(model, tc.init_from, what="train.init_from: the model.pt of a finished run")
        torch.manual_seed(tc.seed + 1_000_003 * rt.rank)  # rank-specific dropout / drop-path streams
        costs = model_costs(model, meta, cfg)
        dataset = meta.get("dataset", "unknown")
        method = method or tc.model
        tracker = None
        if cfg.tracking.enabled and rt.is_main:
            from harness.tracking import Tracker, git_info

            tracker = Tracker()
            git = git_info()
        else:
            git = {"commit": "unknown", "dirty": "unknown"}
        tags = {
            "bnas.method": method,
            "bnas.model": tc.model,
            "bnas.dataset": dataset,
            "bnas.seed": tc.seed,
            "bnas.profile": cfg.profile,
            "bnas.stage": stage,
            "bnas.dvc_stage": os.environ.get("DVC_STAGE", ""),
            "bnas.git_commit": git["commit"],
            "bnas.git_dirty": git["dirty"],
            "bnas.data_fingerprint": meta.get("fingerprint", "unknown"),
            "bnas.torch": torch.__version__,
            "bnas.device": str(rt.device),
            "bnas.world_size": rt.world_size,
            "bnas.cost_policy": tc.cost_policy,
            "bnas.precision": arith,
            "bnas.global_batch": tc.batch_size,
            "bnas.batch_deviation": deviation or "none",
        }
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
            tracker=tracker,
            run_name=f"{method}-s{tc.seed}-{stage}",
            experiment=f"{cfg.tracking.experiment_prefix}-{dataset}",
            tags=tags,
            extra_metrics={**costs, "precision": arith, "global_batch": tc.batch_size},
            progress=progress,
        )
        log.info("finished in %.1f s: val/top1 %.2f", time.perf_counter() - t0, metrics.get("val/top1", float("nan")))
        return metrics
    finally:
        teardown_runtime(rt)


def run_evaluate(run_dir: str | Path, data: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a finished run's `model.pt` (with its `config.yaml`) on the prepared dataset's evaluation split."""
    from harness.config import load_config

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
