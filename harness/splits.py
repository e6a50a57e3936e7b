"""The recorded splits and fingerprints every dataset shares: content fingerprints of a source, and stratified,
seeded index splits and subsets (the BNAS search's 25k/25k halves, the profiles' training subsets).

A split is a function of (labels, size, seed) only, so every run on the same prepared data sees the same images; the
search split's index digests are recorded in the prepared dataset's meta.json.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from harness.errors import DataError

__all__ = [
    "CACHE_VERSION",
    "fingerprint_lines",
    "folder_fingerprint",
    "indices_digest",
    "stratified_split",
    "stratified_subset",
]

CACHE_VERSION = 1  # of the prepared datasets' layout (meta.json `cache_version`)


def fingerprint_lines(lines: list[str]) -> str:
    """The first 16 hex digits of the sha256 of `lines` joined (a fingerprint of `sha256sum`-style lines)."""
    return hashlib.sha256("".join(lines).encode()).hexdigest()[:16]


def folder_fingerprint(root: str | Path) -> str:
    """Content fingerprint of a folder: the first 16 hex digits of the sha256 of its sorted `sha256sum` lines.

    Equals `cd root && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum` (first 16 digits), the
    convention of `shared/data/README.md`.
    """
    root = Path(root)
    files = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix().encode())
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  ./{p.relative_to(root).as_posix()}\n" for p in files]
    return fingerprint_lines(lines)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices per class by a seeded permutation: the first `fraction` of each class goes to the first part.

    Used for BNAS's weight-training / architecture-validation halves of the CIFAR-10 train set (docs/bnas.md §4).
    Both parts are returned sorted.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"split fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    first, second = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(len(idx) * fraction))
        first.append(idx[:k])
        second.append(idx[k:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` indices drawn per class in equal shares (seeded), sorted; `n <= 0` or `n >= len` returns all indices."""
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    per = np.full(len(classes), n // len(classes))
    per[: n % len(classes)] += 1
    out = []
    for c, k in zip(classes, per, strict=True):
        idx = np.flatnonzero(labels == c)
        out.append(idx[rng.permutation(len(idx))[:k]])
    return np.sort(np.concatenate(out))


def indices_digest(idx: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(idx, dtype=np.int64).tobytes()).hexdigest()[:16]
