"""`harness/imagenet.py` on the real Imagenette copy: the folder layout, its fingerprint and the transforms."""

from __future__ import annotations

from pathlib import Path

import pytest
from _helpers import README_FINGERPRINTS
from PIL import Image

from harness.errors import DataError
from harness.imagenet import imagenet_loaders, imagenet_root, prepare_imagenet


def test_imagenet_folder_layout_and_transforms(data_root, tmp_path):
    root = data_root / "imagenette"
    meta = prepare_imagenet(root, tmp_path / "imagenet")
    assert meta["num_train"] == 1000 and meta["num_val"] == 500 and len(meta["classes"]) == 10
    assert meta["source_fingerprint"] == {
        "train": README_FINGERPRINTS["imagenette/train"],
        "val": README_FINGERPRINTS["imagenette/val"],
    }
    from harness.config import DataConfig

    train, val, _ = imagenet_loaders(tmp_path / "imagenet", DataConfig(num_workers=0), 8, seed=0)
    train.set_epoch(0)
    x, y = next(iter(train))
    assert x.shape == (8, 3, 224, 224) and y.shape == (8,)
    xv, yv = next(iter(val))
    assert xv.shape == (8, 3, 224, 224) and yv.tolist() == [0] * 8  # val is ordered by class
    # greyscale JPEGs come out as 3-channel RGB
    grey = next(p for p in sorted((root / "train").rglob("*.JPEG")) if Image.open(p).mode != "RGB")
    ds = train.loader.dataset
    i = [Path(s[0]).resolve() for s in ds.samples].index(grey.resolve())
    assert ds[i][0].shape == (3, 224, 224)


def test_imagenet_bad_layout(tmp_path):
    with pytest.raises(DataError, match="not found"):
        prepare_imagenet(tmp_path / "nope", tmp_path / "o")
    (tmp_path / "inet" / "train" / "n01440764").mkdir(parents=True)
    with pytest.raises(DataError, match="missing 'val/'"):
        prepare_imagenet(tmp_path / "inet", tmp_path / "o")


def test_imagenet_root_finds_the_folder_under_a_data_root(data_root):
    assert imagenet_root(data_root) == data_root / "imagenette"
    assert imagenet_root(data_root / "imagenette") == data_root / "imagenette"
