"""`harness/cifar10.py` on the real CIFAR-10 copy (never synthetic images): the prepared cache, its recorded search
split, the loaders and the restricted unpickler."""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import shutil
import struct
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import README_FINGERPRINTS
from PIL import Image

from harness.cifar10 import CIFAR10_CLASSES, CifarLoader, crop_flip, load_cifar10, prepare_cifar10
from harness.errors import DataError
from harness.splits import stratified_split, stratified_subset

# From shared/data/README.md (sha256 of the sorted sha256sum lines, first 16 hex digits).


def test_cifar_cache_matches_the_source(cifar_cache, data_root):
    meta = json.loads((cifar_cache / "meta.json").read_text())
    assert meta["source_fingerprint"] == {
        "train": README_FINGERPRINTS["cifar10/train"],
        "test": README_FINGERPRINTS["cifar10/test"],
    }
    ds = load_cifar10(cifar_cache)
    assert ds.train_x.shape == (50_000, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (10_000, 3, 32, 32)
    assert torch.bincount(ds.train_y).tolist() == [5000] * 10
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10
    # pixel-exact against PIL for a few images; labels follow the alphabetical class folders
    for split, x, y in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
        per_class = 5000 if split == "train" else 1000
        for i in (0, per_class * 3 + 17, len(y) - 1):
            cls = CIFAR10_CLASSES[int(y[i])]
            name = sorted(p.name.encode() for p in (data_root / "cifar10" / split / cls).iterdir())[i % per_class]
            ref = np.asarray(Image.open(data_root / "cifar10" / split / cls / name.decode()).convert("RGB"))
            assert np.array_equal(x[i].permute(1, 2, 0).numpy(), ref)


def test_search_split_is_recorded_stratified_and_deterministic(cifar_cache):
    ds = load_cifar10(cifar_cache)
    tr, va = ds.search_train_idx.numpy(), ds.search_val_idx.numpy()
    assert len(tr) == len(va) == 25_000
    assert len(np.intersect1d(tr, va)) == 0 and len(np.union1d(tr, va)) == 50_000
    y = ds.train_y.numpy()
    assert np.bincount(y[tr]).tolist() == [2500] * 10
    again, _ = stratified_split(y, 0.5, 0)
    assert np.array_equal(again, tr)
    other, _ = stratified_split(y, 0.5, 1)
    assert not np.array_equal(other, tr)
    sub = stratified_subset(y, 1000, 0)
    assert len(sub) == 1000 and np.bincount(y[sub]).tolist() == [100] * 10


def _write_batches(folder: Path, ds) -> dict[str, np.ndarray]:
    """A torchvision-format cifar-10-batches-py folder holding real CIFAR images (20 per batch file)."""
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate(
        ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    ):
        src_x, src_y = (ds.test_x, ds.test_y) if name == "test_batch" else (ds.train_x, ds.train_y)
        idx = i * 997 % 1000 + torch.arange(20) * 450
        x = src_x[idx].numpy()
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x.reshape(len(x), -1), b"labels": src_y[idx].tolist()}, f)
        written[name] = x
    return written


def test_prepare_from_torchvision_batches(cifar_cache, tmp_path):
    ds = load_cifar10(cifar_cache)
    written = _write_batches(tmp_path / "src" / "cifar-10-batches-py", ds)
    meta = prepare_cifar10(
        tmp_path / "src", tmp_path / "out", split_seed=0, search_train_fraction=0.5, download_root=tmp_path
    )
    assert meta["source_kind"] == "batches" and meta["num_train"] == 100 and meta["num_test"] == 20
    got = load_cifar10(tmp_path / "out")
    assert np.array_equal(got.train_x[:20].numpy(), written["data_batch_1"])
    assert np.array_equal(got.test_x.numpy(), written["test_batch"])


def test_missing_and_corrupt_sources_are_clear_errors(tmp_path, data_root):
    with pytest.raises(DataError, match="nope.*not found"):
        prepare_cifar10(
            tmp_path / "nope", tmp_path / "o", split_seed=0, search_train_fraction=0.5, download_root=tmp_path
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no CIFAR-10 found"):
        prepare_cifar10(
            tmp_path / "empty", tmp_path / "o", split_seed=0, search_train_fraction=0.5, download_root=tmp_path
        )
    # a class-folder tree with one real image per class and one corrupt file
    tree = tmp_path / "tree"
    for split in ("train", "test"):
        for cls in CIFAR10_CLASSES:
            d = tree / split / cls
            d.mkdir(parents=True)
            src = sorted((data_root / "cifar10" / split / cls).iterdir())[0]
            shutil.copy(src, d / src.name)
    (tree / "train" / "cat" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="zz_broken.png: corrupt"):
        prepare_cifar10(tree, tmp_path / "o", split_seed=0, search_train_fraction=0.5, download_root=tmp_path)
    assert not (tmp_path / "o" / "meta.json").exists()  # no half-written cache
    (tree / "train" / "cat" / "zz_broken.png").unlink()
    shutil.rmtree(tree / "test" / "dog")
    with pytest.raises(DataError, match="not the 10 CIFAR-10 classes"):
        prepare_cifar10(tree, tmp_path / "o", split_seed=0, search_train_fraction=0.5, download_root=tmp_path)


def test_load_rejects_missing_or_truncated_cache(cifar_cache, tmp_path):
    with pytest.raises(DataError, match="meta.json missing"):
        load_cifar10(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(cifar_cache, bad)
    (bad / "test_x.npy").write_bytes((bad / "test_x.npy").read_bytes()[:1000])
    with pytest.raises(DataError, match="corrupt CIFAR-10 cache"):
        load_cifar10(bad)


def test_crop_flip_equals_per_image_torchvision_ops(cifar_cache):
    ds = load_cifar10(cifar_cache)
    x = ds.train_x[:16]
    g = torch.Generator().manual_seed(0)
    oy, ox = torch.randint(0, 9, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    out = crop_flip(x, oy, ox, flip)
    from torchvision.transforms.functional import crop, hflip, pad

    for i in range(16):
        ref = crop(pad(x[i], [4]), int(oy[i]), int(ox[i]), 32, 32)
        if flip[i]:
            ref = hflip(ref)
        assert torch.equal(out[i], ref)


def test_cifar_loader_epochs_shards_and_normalisation(cifar_cache):
    ds = load_cifar10(cifar_cache)
    x, y = ds.train_x[:1000], ds.train_y[:1000]
    full = CifarLoader(x, y, 100, train=True, seed=3)
    full.set_epoch(1)
    a = [b[0] for b in full]
    b = [b[0] for b in full]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))  # an epoch is reproducible
    full.set_epoch(2)
    assert not torch.equal(next(iter(full))[0], a[0])
    # two ranks take disjoint halves of the same permutation, with the same augmentation per sample
    full.set_epoch(1)
    ys_full = torch.cat([b[1] for b in full])
    shards = [CifarLoader(x, y, 50, train=True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for s in shards:
        s.set_epoch(1)
    xs = [torch.cat([b[0] for b in s]) for s in shards]
    ys = [torch.cat([b[1] for b in s]) for s in shards]
    assert len(xs[0]) == len(xs[1]) == 500
    assert torch.equal(torch.stack([ys[0], ys[1]], 1).reshape(-1), ys_full)
    assert torch.equal(torch.stack([xs[0], xs[1]], 1).reshape(-1, 3, 32, 32), torch.cat(a))
    # normalised with the CIFAR train statistics: a plain pass over the whole train set has mean 0, std 1
    ev = CifarLoader(ds.train_x, ds.train_y, 5000, train=False)
    allx = torch.cat([b[0] for b in ev])
    assert allx.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert (allx.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3


def test_a_trailing_single_sample_batch_is_dropped_in_training(cifar_cache):
    ds = load_cifar10(cifar_cache)
    loader = CifarLoader(ds.train_x[:129], ds.train_y[:129], 64, train=True)
    assert len(loader) == 2 and [len(b[1]) for b in loader] == [64, 64]
    ev = CifarLoader(ds.train_x[:129], ds.train_y[:129], 64, train=False)
    assert len(ev) == 3 and sum(len(b[1]) for b in ev) == 129


# ---------------------------------------------------------------------------------------------------------------------
# CIFAR-10 python batches are read with a restricted unpickler: no code runs from a data file


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler, whose opcodes can be chosen
    """Writes a batch as the official CIFAR-10 files are (Python 2 cPickle, protocol 2): every string a py2 `str`
    (SHORT_BINSTRING / BINSTRING, read back as bytes) and numpy's globals under numpy 1.x's `numpy.core`."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        b = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(b) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) + b)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(b)) + b)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        name = name or obj.__qualname__
        module = pickle.whichmodule(obj, name).replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)


def _py2_dumps(obj: object) -> bytes:
    """`obj` pickled as Python 2's cPickle wrote the official files (protocol 2, py2 strings)."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _official_batch(x: np.ndarray, labels: list[int], label: str, names: list[str]) -> bytes:
    """An official-format CIFAR-10 batch of NHWC uint8 images `x` (rows: 1024 R, 1024 G, 1024 B values)."""
    d = {
        b"batch_label": label.encode(),
        b"labels": labels,
        b"data": np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), 3072)),
        b"filenames": [n.encode() for n in names],
    }
    return _py2_dumps(d)


def _official_batches(folder: Path, data_root: Path) -> dict[str, np.ndarray]:
    """A `cifar-10-batches-py` folder in the official format holding real CIFAR-10 images (one per class per file)."""
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate(
        ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    ):
        split = "test" if name == "test_batch" else "train"
        files = [sorted((data_root / "cifar10" / split / c).iterdir())[i] for c in CIFAR10_CLASSES]
        x = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])
        (folder / name).write_bytes(_official_batch(x, list(range(10)), f"{split} batch {i}", [p.name for p in files]))
        written[name] = x
    meta = {b"num_cases_per_batch": 10, b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(_py2_dumps(meta))
    return written


def test_official_format_batches_load_with_the_restricted_unpickler(data_root, tmp_path):
    written = _official_batches(tmp_path / "src" / "cifar-10-batches-py", data_root)
    blob = (tmp_path / "src" / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(blob)]
    # what the official files reference: three numpy globals, py2 strings only
    assert {arg for name, arg in ops if name == "GLOBAL"} == {
        "numpy.core.multiarray _reconstruct",
        "numpy ndarray",
        "numpy dtype",
    }
    assert not any("UNICODE" in name for name, _ in ops)
    meta = prepare_cifar10(
        tmp_path / "src", tmp_path / "out", split_seed=0, search_train_fraction=0.5, download_root=tmp_path / "dl"
    )
    assert meta["source_kind"] == "batches" and meta["num_train"] == 50 and meta["num_test"] == 10
    got = load_cifar10(tmp_path / "out")
    assert np.array_equal(got.train_x[:10].permute(0, 2, 3, 1).numpy(), written["data_batch_1"])
    assert np.array_equal(got.test_x.permute(0, 2, 3, 1).numpy(), written["test_batch"])
    assert got.train_y[:10].tolist() == list(range(10))


class _Payload:
    """Unpickling this calls `fn(*args)`: how a crafted pickle runs code."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker: Path) -> dict[str, tuple[object, Callable[[object], bytes]]]:
    """Pickle payloads that each create `marker` when executed, with the writer that pickles them."""
    return {
        "open": (_Payload(open, (str(marker), "w")), pickle.dumps),
        "os.system": (_Payload(os.system, (f"touch '{marker}'",)), _py2_dumps),  # the official files' format
        "exec": (_Payload(exec, (f"open({str(marker)!r}, 'w').close()",)), partial(pickle.dumps, protocol=4)),
    }


def _malicious_batches(src: Path, data_root: Path, payload: object, dumps: Callable[[object], bytes]) -> Path:
    """Official-format batches whose data_batch_1 carries `payload` in place of its image array."""
    _official_batches(src / "cifar-10-batches-py", data_root)
    evil = {b"batch_label": b"training batch 1 of 5", b"labels": [0], b"data": payload}
    (src / "cifar-10-batches-py" / "data_batch_1").write_bytes(dumps(evil))
    return src


@pytest.mark.parametrize("kind", ["open", "os.system", "exec"])
def test_a_crafted_batch_file_runs_no_code(kind, data_root, tmp_path):
    # the payload is real: a plain pickle.load runs it
    probe = tmp_path / "probe"
    payload, dumps = _payloads(probe)[kind]
    pickle.loads(dumps(payload))
    assert probe.exists()

    marker = tmp_path / "pwned"
    payload, dumps = _payloads(marker)[kind]
    src = _malicious_batches(tmp_path / "src", data_root, payload, dumps)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"data_batch_1: refused to unpickle global '[\w.]+'") as e:
        prepare_cifar10(src, out, split_seed=0, search_train_fraction=0.5, download_root=tmp_path / "dl")
    assert {"open": "'io.open'", "os.system": "'posix.system'", "exec": "'builtins.exec'"}[kind] in str(e.value)
    assert "\n" not in str(e.value)
    assert not marker.exists()
    assert not out.exists() and not (tmp_path / "dl").exists()  # nothing written, not even an empty folder
