"""CIFAR-10: `bnas prepare cifar10` converts a source once into a uint8 cache; :class:`CifarLoader` serves batches
from memory, augmented with tensor ops on the training device.

Sources (any one): a torchvision `cifar-10-batches-py` folder, a class-folder image tree (`train/<class>/*.png`,
`test/<class>/*.png`, alphabetical classes = CIFAR label order) or a torchvision download. The cache holds
`{train,test}_{x,y}.npy` (NHWC uint8 / int64), the recorded BNAS search split (harness/splits.py) and `meta.json` with
the source's content fingerprint.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from harness.errors import DataError
from harness.io import atomic_path, atomic_write_json
from harness.splits import CACHE_VERSION, fingerprint_lines, folder_fingerprint, indices_digest, stratified_split

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "CifarData",
    "CifarLoader",
    "crop_flip",
    "load_cifar10",
    "prepare_cifar10",
]

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel statistics of the CIFAR-10 training set, as used by DARTS and BNAS.
CIFAR_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR_STD = (0.24703233, 0.24348505, 0.26158768)

_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}
_FOLDER_LAYOUT = "a class-folder tree train/<class>/*.png and test/<class>/*.png with the 10 CIFAR-10 classes"
_BATCHES_LAYOUT = "a torchvision 'cifar-10-batches-py' folder (data_batch_1..5, test_batch)"


def _find_cifar_source(source: Path) -> tuple[str, Path]:
    """Return ("batches"|"folders", path) for the CIFAR-10 copy at or under `source`."""
    candidates = [source, source / "cifar-10-batches-py", source / "cifar10", source / "cifar-10"]
    for c in candidates:
        if (c / "data_batch_1").is_file() or (c / "test_batch").is_file():
            return "batches", c
        if (c / "train").is_dir() and (c / "test").is_dir():
            return "folders", c
    raise DataError(f"{source}: no CIFAR-10 found; expected {_BATCHES_LAYOUT} or {_FOLDER_LAYOUT}")


def _read_folder_split(split_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if tuple(classes) != CIFAR10_CLASSES:
        raise DataError(
            f"{split_dir}: class folders {classes} are not the 10 CIFAR-10 classes; expected {_FOLDER_LAYOUT}"
        )
    images, labels, lines = [], [], []
    for label, cls in enumerate(classes):
        files = sorted((p for p in (split_dir / cls).iterdir() if p.is_file()), key=lambda p: p.name.encode())
        for p in files:
            if p.suffix.lower() not in _IMAGE_EXTS:
                raise DataError(f"{p}: not an image file; expected {_FOLDER_LAYOUT}")
            data = p.read_bytes()
            try:
                with Image.open(io.BytesIO(data)) as im:
                    arr = np.asarray(im.convert("RGB"))
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"{p}: corrupt or unreadable image ({e}); expected a 32x32 RGB image") from None
            if arr.shape != (32, 32, 3):
                raise DataError(f"{p}: image is {arr.shape[1]}x{arr.shape[0]}, expected 32x32 CIFAR-10 images")
            images.append(arr)
            labels.append(label)
            lines.append((p.relative_to(split_dir).as_posix(), hashlib.sha256(data).hexdigest()))
    if not images:
        raise DataError(f"{split_dir}: no images found; expected {_FOLDER_LAYOUT}")
    lines.sort(key=lambda t: t[0].encode())
    fp = fingerprint_lines([f"{h}  ./{rel}\n" for rel, h in lines])
    return np.stack(images), np.asarray(labels, dtype=np.int64), [fp]


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle referenced a global outside the CIFAR-10 batch format."""

    def __init__(self, name: str) -> None:
        super().__init__(f"refused global {name}")
        self.name = name


def _cifar_pickle_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR-10 python batch may reference, mapped to this numpy's objects (nothing is imported).

    The official files (Python 2 cPickle, protocol 2) name `numpy.core.multiarray._reconstruct`, `numpy.ndarray` and
    `numpy.dtype`; a batch re-pickled by numpy 2 names `numpy._core...`, and with protocol 5 `numeric._frombuffer`.
    Dicts, lists, ints and byte strings need no global.
    """
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        out[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        out[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer  # type: ignore[attr-defined]  # private, numpy 2
    return out


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 python batch and nothing else: any other global (the way a pickle runs code) is refused."""

    _allowed = _cifar_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object for `module.name`; raises `_RefusedGlobal` for anything else."""
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def _read_batch_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: missing; expected {_BATCHES_LAYOUT}")
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
    except _RefusedGlobal as e:
        raise DataError(
            f"{path}: refused to unpickle global '{e.name}': a CIFAR-10 batch holds only numpy arrays, lists, numbers "
            f"and byte strings (the file may be malicious); expected {_BATCHES_LAYOUT}"
        ) from None
    except Exception as e:  # noqa: BLE001 - any failure to parse is a corrupt file for the user
        raise DataError(
            f"{path}: corrupt CIFAR-10 batch file ({type(e).__name__}: {e}); expected {_BATCHES_LAYOUT}"
        ) from None
    try:
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except Exception as e:  # noqa: BLE001 - any failure to parse is a corrupt file for the user
        raise DataError(
            f"{path}: corrupt CIFAR-10 batch file ({type(e).__name__}: {e}); expected {_BATCHES_LAYOUT}"
        ) from None
    bad_labels = labels.ndim != 1 or len(labels) == 0 or labels.min() < 0 or labels.max() > 9
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data) or bad_labels:
        raise DataError(f"{path}: unexpected content (data {data.shape}); expected rows of 3072 uint8 and labels 0..9")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def _read_batches(folder: Path) -> dict[str, Any]:
    train = [_read_batch_file(folder / f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = _read_batch_file(folder / "test_batch")
    return {
        "train_x": np.concatenate([t[0] for t in train]),
        "train_y": np.concatenate([t[1] for t in train]),
        "test_x": test_x,
        "test_y": test_y,
        "fingerprint": {"all": folder_fingerprint(folder)},
    }


def _download_cifar10(root: Path) -> Path:
    """Download with torchvision (checks its md5s); needs internet."""
    from torchvision.datasets import CIFAR10

    try:
        CIFAR10(str(root), train=True, download=True)
        CIFAR10(str(root), train=False, download=True)
    except Exception as e:  # noqa: BLE001 - network errors come in many types
        raise DataError(
            f"{root}: CIFAR-10 download failed ({type(e).__name__}); offline, point --source or BNAS_DATA at a local "
            f"copy ({_BATCHES_LAYOUT} or {_FOLDER_LAYOUT})"
        ) from None
    return root / "cifar-10-batches-py"


def prepare_cifar10(
    source: str | Path | None,
    out: str | Path,
    *,
    split_seed: int,
    search_train_fraction: float,
    download_root: str | Path,
) -> dict[str, Any]:
    """Convert CIFAR-10 into the uint8 cache at `out` and record its fingerprint and the BNAS search split.

    Args:
        source: a folder holding CIFAR-10 in one of the supported layouts; None downloads it with torchvision.
        out: cache folder to (re)write; written atomically file by file, `meta.json` last.
        split_seed: seed of the stratified search split.
        search_train_fraction: share of each class that trains the weights during search (BNAS: 0.5).
        download_root: where a download goes when `source` is None.

    Returns:
        The metadata written to `out/meta.json`.
    """
    if source is None:
        kind, path = "batches", _download_cifar10(Path(download_root))
    else:
        source = Path(source).expanduser()
        if not source.exists():
            raise DataError(f"{source}: data source not found; expected {_BATCHES_LAYOUT} or {_FOLDER_LAYOUT}")
        kind, path = _find_cifar_source(source)
    log.info("reading CIFAR-10 (%s) from %s", kind, path)
    if kind == "batches":
        arrays = _read_batches(path)
    else:
        tr_x, tr_y, tr_fp = _read_folder_split(path / "train")
        te_x, te_y, te_fp = _read_folder_split(path / "test")
        arrays = {
            "train_x": tr_x,
            "train_y": tr_y,
            "test_x": te_x,
            "test_y": te_y,
            "fingerprint": {"train": tr_fp[0], "test": te_fp[0]},
        }
    search_train, search_val = stratified_split(arrays["train_y"], search_train_fraction, split_seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "meta.json"
    if meta_path.exists():
        meta_path.unlink()  # the cache is incomplete until meta.json is rewritten last
    files = {
        "train_x": arrays["train_x"],
        "train_y": arrays["train_y"],
        "test_x": arrays["test_x"],
        "test_y": arrays["test_y"],
        "search_train_idx": search_train.astype(np.int64),
        "search_val_idx": search_val.astype(np.int64),
    }
    for name, arr in files.items():
        with atomic_path(out / f"{name}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(arr))
    fp = arrays["fingerprint"]
    meta = {
        "dataset": "cifar10",
        "cache_version": CACHE_VERSION,
        "source_kind": kind,
        "source_fingerprint": fp,
        "fingerprint": fingerprint_lines([f"{k}={v}\n" for k, v in sorted(fp.items())]),
        "classes": list(CIFAR10_CLASSES),
        "num_train": int(len(files["train_y"])),
        "num_test": int(len(files["test_y"])),
        "train_class_counts": np.bincount(files["train_y"], minlength=10).tolist(),
        "test_class_counts": np.bincount(files["test_y"], minlength=10).tolist(),
        "split": {
            "seed": split_seed,
            "search_train_fraction": search_train_fraction,
            "search_train": int(len(search_train)),
            "search_val": int(len(search_val)),
            "search_train_digest": indices_digest(search_train),
            "search_val_digest": indices_digest(search_val),
        },
    }
    atomic_write_json(meta_path, meta)
    return meta


@dataclass(frozen=True)
class CifarData:
    """The prepared CIFAR-10 cache in memory: NCHW uint8 images and int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    search_train_idx: torch.Tensor
    search_val_idx: torch.Tensor
    meta: dict[str, Any]


def load_cifar10(path: str | Path) -> CifarData:
    """Load a cache written by :func:`prepare_cifar10`.

    Raises:
        DataError: the folder is missing, incomplete (no meta.json) or inconsistent.
    """
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise DataError(
            f"{path}: no prepared CIFAR-10 cache (meta.json missing); run `bnas prepare cifar10 --out {path}`"
        )
    try:
        meta = json.loads(meta_path.read_text())
        arrays = {
            n: np.load(path / f"{n}.npy", allow_pickle=False)
            for n in ("train_x", "train_y", "test_x", "test_y", "search_train_idx", "search_val_idx")
        }
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: corrupt CIFAR-10 cache ({e}); re-run `bnas prepare cifar10 --out {path}`") from None
    if meta.get("cache_version") != CACHE_VERSION:
        raise DataError(f"{path}: cache version {meta.get('cache_version')} != {CACHE_VERSION}; re-run `bnas prepare`")
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8 or len(x) != len(y) or len(y) != meta[f"num_{split}"]:
            raise DataError(f"{path}: {split} arrays are inconsistent with meta.json; re-run `bnas prepare`")

    def nchw(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()

    return CifarData(
        train_x=nchw(arrays["train_x"]),
        train_y=torch.from_numpy(arrays["train_y"]),
        test_x=nchw(arrays["test_x"]),
        test_y=torch.from_numpy(arrays["test_y"]),
        search_train_idx=torch.from_numpy(arrays["search_train_idx"]),
        search_val_idx=torch.from_numpy(arrays["search_val_idx"]),
        meta=meta,
    )


# ---------------------------------------------------------------------------------------------------------------------
# batched CIFAR augmentation and loader


def crop_flip(
    x: torch.Tensor, off_y: torch.Tensor, off_x: torch.Tensor, flip: torch.Tensor, pad: int = 4
) -> torch.Tensor:
    """Batched random crop (zero padding `pad`) and horizontal flip of NCHW images, as one gather.

    Equivalent per image to torchvision `RandomCrop(H, padding=pad)` then `RandomHorizontalFlip` with the given
    offsets (0..2*pad) and flip flags.
    """
    n, c, h, w = x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = off_y[:, None] + ar_h  # (n, h)
    cols = off_x[:, None] + ar_w  # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    b = torch.arange(n, device=x.device)[:, None, None, None]
    ch = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[b, ch, rows[:, None, :, None], cols[:, None, None, :]]


class CifarLoader:
    """Iterates (images, labels) batches from uint8 tensors held in memory (on the training device when asked).

    Each epoch draws one permutation and one set of augmentation parameters for the whole dataset from a generator
    seeded by (seed, epoch); a rank takes its shard of it. So an epoch is reproducible after a resume, and the same
    global batch gives the same samples and augmentations for any world size.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        train: bool,
        augment: bool = True,
        seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        mean: tuple[float, ...] = CIFAR_MEAN,
        std: tuple[float, ...] = CIFAR_STD,
        channels_last: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.train = train
        self.augment = augment and train
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.channels_last = channels_last
        std_t = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -torch.tensor(mean, device=self.device).view(1, -1, 1, 1) / std_t
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation and augmentations `__iter__` yields."""
        self.epoch = epoch

    def _shard(self) -> torch.Tensor:
        n = len(self.labels)
        if self.train:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g)
            per_rank = n // self.world_size
            return order[: per_rank * self.world_size][self.rank :: self.world_size]
        return torch.arange(n)[self.rank :: self.world_size]

    def __len__(self) -> int:
        if self.train:  # a trailing batch of one sample is dropped (train-mode BatchNorm cannot take it)
            n = len(self.labels) // self.world_size
            return n // self.batch_size + (1 if n % self.batch_size >= 2 else 0)
        n = len(range(self.rank, len(self.labels), self.world_size))
        return (n + self.batch_size - 1) // self.batch_size

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return len(self._shard())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._shard()
        if self.augment:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 7_919)
            n = len(self.labels)
            aug_off = torch.randint(0, 9, (n, 2), generator=g)
            aug_flip = torch.rand(n, generator=g) < 0.5
        for start in range(0, len(idx), self.batch_size):
            bidx = idx[start : start + self.batch_size]
            if self.train and len(bidx) < 2:
                break
            if self.augment:
                yield self.batch(bidx, aug_off[bidx], aug_flip[bidx])
            else:
                yield self.batch(bidx)

    def batch(
        self, idx: torch.Tensor, off: torch.Tensor | None = None, flip: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of the samples `idx` (CPU indices), normalised; with `off` (b, 2) and `flip` (b,), the
        training crop + flip of each."""
        dev_idx = idx.to(self.device, non_blocking=True)
        x = self.images[dev_idx]
        if off is not None and flip is not None:
            off = off.to(self.device, non_blocking=True)
            x = crop_flip(x, off[:, 0], off[:, 1], flip.to(self.device, non_blocking=True))
        x = x.float().mul_(self.scale).add_(self.shift)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[dev_idx]
