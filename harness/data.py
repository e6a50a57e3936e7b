"""The prepared dataset at a path, as loaders: `meta.json` says which dataset it is (harness/cifar10.py,
harness/imagenet.py), and each process gets its share of the global batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from harness.cifar10 import CifarLoader, load_cifar10
from harness.config import Config
from harness.distributed import Runtime
from harness.errors import ConfigError, DataError
from harness.imagenet import imagenet_loaders
from harness.splits import stratified_subset

__all__ = ["build_loaders", "per_process_batch", "read_meta"]


def read_meta(data: Path) -> dict[str, Any]:
    """The prepared dataset's meta.json (which dataset, its classes, fingerprint and recorded splits).

    Raises:
        DataError: not a prepared dataset, or a corrupt meta.json.
    """
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
    meta = read_meta(data)
    tc, dc = cfg.train, cfg.data
    cl = tc.channels_last
    batch = per_process_batch(tc.batch_size, rt.world_size)
    train: Any
    val: Any
    if meta.get("dataset") == "cifar10":
        ds = load_cifar10(data)
        tr_idx = torch.from_numpy(stratified_subset(ds.train_y.numpy(), dc.train_subset, dc.split_seed))
        te_idx = torch.from_numpy(stratified_subset(ds.test_y.numpy(), dc.test_subset, dc.split_seed))
        dev = rt.device if dc.on_device else torch.device("cpu")
        common: dict[str, Any] = {
            "seed": tc.seed,
            "device": dev,
            "rank": rt.rank,
            "world_size": rt.world_size,
            "channels_last": cl,
        }
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
