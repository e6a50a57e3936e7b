"""ImageNet in the standard folder layout (`train/<wnid>/*`, `val/<wnid>/*`): `bnas prepare imagenet` records its
classes and fingerprint; the loaders apply the BNAS recipe's transforms (RandomResizedCrop 224, flip,
ColorJitter(0.4, 0.4, 0.4, 0.2); val: resize 256, centre crop 224; docs/bnas.md §5.4).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from harness.errors import DataError
from harness.io import atomic_write_json
from harness.splits import CACHE_VERSION, fingerprint_lines, folder_fingerprint, stratified_subset

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EpochLoader",
    "imagenet_loaders",
    "imagenet_root",
    "imagenet_transforms",
    "prepare_imagenet",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_IMAGENET_LAYOUT = "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (the standard ImageNet folder layout)"


def _check_imagenet_root(root: Path) -> list[str]:
    if not root.is_dir():
        raise DataError(f"{root}: ImageNet folder not found; expected {_IMAGENET_LAYOUT}")
    classes: list[str] | None = None
    for split in ("train", "val"):
        d = root / split
        if not d.is_dir():
            raise DataError(f"{root}: missing '{split}/' folder; expected {_IMAGENET_LAYOUT}")
        cls = sorted(p.name for p in d.iterdir() if p.is_dir())
        if not cls:
            raise DataError(f"{d}: no class folders; expected {_IMAGENET_LAYOUT}")
        if classes is not None and cls != classes:
            raise DataError(f"{root}: train/ and val/ hold different class folders; expected the same wnids in both")
        classes = cls
    assert classes is not None
    return classes


def prepare_imagenet(source: str | Path, out: str | Path) -> dict[str, Any]:
    """Check an ImageNet folder tree and write `out/meta.json` (root, classes, counts, fingerprints).

    Images stay where they are (decoded by the loader's workers each epoch); the manifest records what was used.
    """
    root = Path(source).expanduser().resolve()
    classes = _check_imagenet_root(root)
    counts = {s: sum(1 for _ in (root / s).rglob("*") if _.is_file()) for s in ("train", "val")}
    fps = {s: folder_fingerprint(root / s) for s in ("train", "val")}
    meta = {
        "dataset": "imagenet",
        "cache_version": CACHE_VERSION,
        "root": str(root),
        "classes": classes,
        "num_train": counts["train"],
        "num_val": counts["val"],
        "source_fingerprint": fps,
        "fingerprint": fingerprint_lines([f"{k}={v}\n" for k, v in sorted(fps.items())]),
    }
    atomic_write_json(Path(out) / "meta.json", meta)
    return meta


def _rgb_loader(path: str) -> Image.Image:
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")  # greyscale and CMYK images become RGB
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: corrupt or unreadable image ({e})") from None


def imagenet_transforms(cfg: Any, train: bool) -> Any:
    """BNAS ImageNet transforms: train RandomResizedCrop+flip+ColorJitter, val resize+centre crop (docs/bnas.md
    §5.4)."""
    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train and cfg.augment:
        j = cfg.color_jitter
        return T.Compose(
            [
                T.RandomResizedCrop(cfg.image_size),
                T.RandomHorizontalFlip(),
                T.ColorJitter(j, j, j, cfg.color_jitter_hue),
                *norm,
            ]
        )
    return T.Compose([T.Resize(cfg.val_resize), T.CenterCrop(cfg.image_size), *norm])


class EpochLoader:
    """A DataLoader whose shuffling and worker seeds are a function of (seed, epoch), so a resumed run sees the same
    batches and augmentations as an uninterrupted one."""

    def __init__(self, loader: Any, seed: int) -> None:
        self.loader = loader
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        """Reseed shuffling and the workers' augmentation RNG for `epoch`."""
        sampler = self.loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if self.loader.generator is not None:
            self.loader.generator.manual_seed(self.seed * 1_000_003 + epoch)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return len(self.loader.sampler) if hasattr(self.loader.sampler, "__len__") else len(self.loader.dataset)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.loader)


def imagenet_loaders(
    root: str | Path,
    cfg: Any,
    batch_size: int,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> tuple[EpochLoader, EpochLoader, dict[str, Any]]:
    """Train and val loaders over an ImageNet folder tree, sharded by rank (each val image is seen exactly once).

    Args:
        root: the tree, or a folder holding a `meta.json` written by :func:`prepare_imagenet`.
        cfg: the DataConfig.
    """
    from torch.utils.data import DataLoader, DistributedSampler, Subset
    from torchvision.datasets import ImageFolder

    root = Path(root)
    meta: dict[str, Any] = {}
    if (root / "meta.json").is_file():
        meta = json.loads((root / "meta.json").read_text())
        root = Path(meta["root"])
    _check_imagenet_root(root)
    train_set = ImageFolder(str(root / "train"), transform=imagenet_transforms(cfg, True), loader=_rgb_loader)
    val_set = ImageFolder(str(root / "val"), transform=imagenet_transforms(cfg, False), loader=_rgb_loader)
    if cfg.train_subset > 0:
        keep = stratified_subset(np.asarray(train_set.targets), cfg.train_subset, cfg.split_seed)
        train_set = Subset(train_set, keep.tolist())
    val_idx = stratified_subset(np.asarray(val_set.targets), cfg.test_subset, cfg.split_seed)
    kw: dict[str, Any] = {"num_workers": cfg.num_workers, "pin_memory": pin_memory}
    sampler: DistributedSampler[Any] = DistributedSampler(
        train_set, world_size, rank, shuffle=True, seed=seed, drop_last=True
    )
    train = DataLoader(train_set, batch_size, sampler=sampler, drop_last=True, generator=torch.Generator(), **kw)
    val_shard = Subset(val_set, val_idx[rank::world_size].tolist())
    val = DataLoader(val_shard, batch_size, shuffle=False, **kw)
    meta.setdefault("classes", val_set.classes)
    meta.setdefault("dataset", "imagenet")
    return EpochLoader(train, seed), EpochLoader(val, seed), meta


def imagenet_root(source: Path) -> Path:
    """The ImageNet folder of `source`: itself when it has train/, else its imagenet/ or imagenette/ (a data root such
    as BNAS_DATA holding one)."""
    if (source / "train").is_dir():
        return source
    return next((source / n for n in ("imagenet", "imagenette") if (source / n / "train").is_dir()), source)
