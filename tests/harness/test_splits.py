"""`harness/splits.py`: content fingerprints (against the data README's) and the stratified splits."""

from __future__ import annotations

from _helpers import README_FINGERPRINTS

from harness.splits import folder_fingerprint, stratified_split, stratified_subset


def test_folder_fingerprint_matches_readme(data_root):
    assert folder_fingerprint(data_root / "cifar10" / "test") == README_FINGERPRINTS["cifar10/test"]
    assert folder_fingerprint(data_root / "imagenette" / "val") == README_FINGERPRINTS["imagenette/val"]


def test_stratified_split_and_subset_keep_the_class_shares_and_depend_only_on_the_seed(cifar_cache):
    import numpy as np

    labels = np.load(cifar_cache / "train_y.npy")[:5000]  # real CIFAR-10 labels
    a, b = stratified_split(labels, 0.5, seed=0)
    assert len(set(a) & set(b)) == 0 and len(a) + len(b) == len(labels)
    assert np.abs(np.bincount(labels[a], minlength=10) - np.bincount(labels[b], minlength=10)).max() <= 1
    a2, _ = stratified_split(labels, 0.5, seed=0)
    assert np.array_equal(a, a2) and not np.array_equal(a, stratified_split(labels, 0.5, seed=1)[0])
    sub = stratified_subset(labels, 1000, seed=0)
    share = np.bincount(labels[sub], minlength=10) / 1000 - np.bincount(labels, minlength=10) / len(labels)
    assert len(sub) == len(set(sub)) == 1000 and np.abs(share).max() < 0.002
