"""`bnas search` end to end on real CIFAR-10 (tiny supernet), including a SIGKILL mid-search and --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from methods.bnas.genotypes import Genotype, genotype_from_json, genotype_to_json


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def _history(path: Path) -> list[dict]:
    import csv

    return _strip(list(csv.DictReader(open(path))))


def test_search_writes_genotype_and_resumes_exactly_after_sigkill(cifar_cache, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "search: {epochs: 3, train_subset: 64, layers: 5, init_channels: 4, batch_size: 32, device: cpu, threads: 2}\n"
        "tracking: {enabled: false}\n"
    )
    bnas = str(Path(sys.executable).parent / "bnas")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    args = ["search", "--params", str(params), "--data", str(cifar_cache)]
    ref = subprocess.run([bnas, *args, "--out", str(tmp_path / "ref")], env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "ref"
    result = json.loads((out / "genotype.json").read_text())
    g = genotype_from_json(json.dumps(result["genotype"]))
    assert isinstance(g, Genotype) and 1 <= result["epoch"] <= 3 and result["selection"] == "end-of-epoch"
    genotype_from_json(json.dumps(result["genotype_imagenet"]))
    assert genotype_from_json(out / "genotype.json") == g  # the train stage reads the search result directly
    assert len(list((out / "genotypes").glob("epoch*.json"))) == 3
    assert not (out / "alphas.png").exists()  # a view: the figures stage draws the alphas (harness/figures.py)
    # the final alphas in the `bnas derive` format re-derive the final genotype
    from harness.searching import derive_from_alphas

    assert json.loads(genotype_to_json(derive_from_alphas(out / "alphas.json"))) == result["genotype_final"]
    assert derive_from_alphas(out / "alphas.json", gamma=3.0) == genotype_from_json(
        json.dumps(result["genotype_imagenet_final"])
    )
    # the selected cell and its ImageNet variant come from the alphas behind it
    assert json.loads(genotype_to_json(derive_from_alphas(out / "alphas_best.json"))) == result["genotype"]
    assert derive_from_alphas(out / "alphas_best.json", gamma=3.0) == genotype_from_json(
        json.dumps(result["genotype_imagenet"])
    )
    hist = _history(out / "history.csv")
    assert [r["epoch"] for r in hist] == ["1", "2", "3"]
    assert all(0 < float(r["alpha_entropy"]) <= 1.946 for r in hist)
    assert float(hist[0]["reg_weight"]) == 1.0
    # kill somewhere after the first epoch's checkpoint, then resume
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [bnas, *args, "--out", str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "history.csv").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "metrics.json").exists()  # killed mid-search
    res = subprocess.run([bnas, *args, "--out", str(run), "--resume"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _history(run / "history.csv") == hist
    assert json.loads((run / "genotype.json").read_text()) == result
    for name in ("alphas_best.json", "alphas_final.json"):  # the checkpoint keeps the selected alphas
        assert json.loads((run / name).read_text()) == json.loads((out / name).read_text()), name
    a = torch.load(out / "checkpoint.pt", weights_only=True)["model"]["net"]
    b = torch.load(run / "checkpoint.pt", weights_only=True)["model"]["net"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- which cell is selected, and which validation images select it ---------------------------------------------------

TINY = {"train_subset": 64, "layers": 5, "init_channels": 4, "batch_size": 32, "device": "cpu", "threads": 1}


def _cfg(track: bool = False, **search):
    from harness.config import config_from_dict

    return config_from_dict({"search": {**TINY, **search}, "tracking": {"enabled": track}})


def _raw_val(cache: Path) -> torch.Tensor:
    """The search's validation images (TINY subset), normalised and un-augmented, in order, one row per image."""
    from harness.cifar10 import CifarLoader, load_cifar10
    from harness.searching import _split

    ds = load_cifar10(cache)
    x, y = _split(ds.train_x, ds.train_y, ds.search_val_idx, TINY["train_subset"], 0)
    return next(iter(CifarLoader(x, y, len(y), train=False)))[0].flatten(1)


def _match(batch: torch.Tensor, ref: torch.Tensor) -> list[int]:
    """Per image of the batch: the index of the identical raw validation image, -1 if none is identical."""
    eq = (batch.flatten(1)[:, None, :] == ref[None]).all(-1)
    return [int(r.nonzero()[0, 0]) if r.any() else -1 for r in eq]


class _Spy:
    """Records the architecture batches the searcher is given and the images of each selection evaluation. With
    `script`, the evaluation reports those numbers of correct images (epoch by epoch): the best epoch is known."""

    def __init__(self, monkeypatch, script: list[int] | None = None) -> None:
        import harness.searching as searching
        from methods.bnas.search import BnasSearcher

        self.arch: list[torch.Tensor] = []
        self.evals: list[torch.Tensor] = []
        step, evaluate = BnasSearcher.step_metrics, searching.evaluate

        def step_spy(searcher, train_batch, val_batch):
            self.arch.append(val_batch[0].clone())
            return step(searcher, train_batch, val_batch)

        def eval_spy(forward, loader, rt):
            self.evals.append(torch.cat([x for x, _ in loader]))
            out = evaluate(forward, loader, rt)
            if script:
                out["val/top1"] = 100.0 * script[len(self.evals) - 1] / out["val/n"]
            return out

        monkeypatch.setattr(BnasSearcher, "step_metrics", step_spy)
        monkeypatch.setattr(searching, "evaluate", eval_spy)


def _alphas(path: Path) -> tuple[list, list]:
    d = json.loads(path.read_text())
    return d["alphas_normal"], d["alphas_reduce"]


def test_search_keeps_and_writes_the_alphas_of_the_best_epoch_and_selects_on_unaugmented_images(
    cifar_cache, tmp_path, monkeypatch
):
    from harness.searching import derive_from_alphas, run_search

    spy = _Spy(monkeypatch, script=[30, 10])  # of 64: epoch 1 is the best, not the last
    out = tmp_path / "run"
    metrics = run_search(_cfg(epochs=2), cifar_cache, out, progress=False)
    result = json.loads((out / "genotype.json").read_text())
    best = json.loads((out / "alphas_best.json").read_text())
    assert result["epoch"] == best["epoch"] == 1 and best["alphas_epoch"] == 1
    assert best["selection"] == result["selection"] == "end-of-epoch" and best["val_top1"] == 100 * 30 / 64
    # the file holds the evaluated (end-of-epoch) alphas of epoch 1, not the final ones
    assert _alphas(out / "alphas_best.json") == _alphas(out / "genotypes" / "epoch001.json")
    assert _alphas(out / "alphas_best.json") != _alphas(out / "alphas.json")
    assert json.loads((out / "genotypes" / "epoch001.json").read_text())["genotype"] == result["genotype"]
    # they re-derive the selected genotype and its ImageNet-transfer variant
    assert json.loads(genotype_to_json(derive_from_alphas(out / "alphas_best.json"))) == result["genotype"]
    imagenet = json.loads(genotype_to_json(derive_from_alphas(out / "alphas_best.json", gamma=3.0)))
    assert imagenet == result["genotype_imagenet"]
    assert (
        json.loads(genotype_to_json(derive_from_alphas(out / "alphas.json", gamma=3.0)))
        == (result["genotype_imagenet_final"])
    )
    final = json.loads((out / "alphas_final.json").read_text())
    assert final == {**json.loads((out / "alphas.json").read_text()), "epoch": 2, "selection": "final"}
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (ckpt["best"]["alphas"]["alphas_normal"], ckpt["best"]["alphas"]["alphas_reduce"]) == _alphas(
        out / "alphas_best.json"
    )
    assert metrics["precision"] == "fp32" and json.loads((out / "metrics.json").read_text())["precision"] == "fp32"
    # default selection data: un-augmented validation images; the architecture batches are one shuffled pass
    ref = _raw_val(cifar_cache)
    assert len(spy.arch) == 4 and len(spy.evals) == 2
    for epoch in range(2):
        a, b = (_match(x, ref) for x in spy.arch[2 * epoch : 2 * epoch + 2])
        assert -1 not in a + b
        assert sorted(a + b) == list(range(64)) and a != list(range(32))  # one shuffled pass: a permutation
        assert torch.equal(spy.evals[epoch].flatten(1), ref)  # the selection evaluation: the raw images


def test_official_genotype_offset_keeps_the_alphas_at_the_start_of_the_best_epoch(cifar_cache, tmp_path, monkeypatch):
    from harness.searching import derive_from_alphas, run_search

    _Spy(monkeypatch, script=[10, 30])  # epoch 2 is the best: the release keeps the alphas it started from
    out = tmp_path / "run"
    run_search(_cfg(epochs=2, official_genotype_offset=True), cifar_cache, out, progress=False)
    result = json.loads((out / "genotype.json").read_text())
    best = json.loads((out / "alphas_best.json").read_text())
    assert result["epoch"] == best["epoch"] == 2 and best["alphas_epoch"] == 1
    assert result["selection"] == best["selection"] == "start-of-epoch (release)"
    assert _alphas(out / "alphas_best.json") == _alphas(out / "genotypes" / "epoch001.json")
    assert _alphas(out / "alphas_best.json") != _alphas(out / "genotypes" / "epoch002.json")
    assert json.loads(genotype_to_json(derive_from_alphas(out / "alphas_best.json"))) == result["genotype"]
    imagenet = json.loads(genotype_to_json(derive_from_alphas(out / "alphas_best.json", gamma=3.0)))
    assert imagenet == result["genotype_imagenet"]


def test_official_val_resample_draws_a_fresh_batch_at_every_architecture_step(cifar_cache, tmp_path, monkeypatch):
    from harness.searching import run_search

    spy = _Spy(monkeypatch)
    run_search(_cfg(epochs=1, official_val_resample=True), cifar_cache, tmp_path / "run", progress=False)
    ref = _raw_val(cifar_cache)
    a, b = (_match(x, ref) for x in spy.arch)
    assert -1 not in a + b  # not augmented
    assert len(set(a)) == len(set(b)) == 32  # without replacement within a batch
    assert set(a) & set(b)  # independent draws, not two slices of one permutation (disjoint: p = 1 / C(64, 32))
    assert torch.equal(spy.evals[0].flatten(1), ref)


def test_resampled_batches_are_seeded_independent_and_sharded():
    from harness.cifar10 import CifarLoader
    from harness.searching import ResampledBatches

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.arange(100)  # the label is the sample's index

    def draws(epoch: int, rank: int = 0, world: int = 1, augment: bool = False, k: int = 20) -> list[torch.Tensor]:
        ld = CifarLoader(images, labels, 10 // world, train=True, augment=augment, rank=rank, world_size=world)
        it = ResampledBatches(ld, 10, augment=augment, seed=5).batches(epoch)
        return [next(it) for _ in range(k)]

    steps = draws(0)
    ys = [y for _, y in steps]
    assert all(len(set(y.tolist())) == 10 for y in ys)  # without replacement within a batch
    assert len({tuple(y.tolist()) for y in ys}) == 20  # a fresh batch each step
    assert len(set(torch.cat(ys[:10]).tolist())) < 100  # not ten slices of one permutation
    assert all(torch.equal(y, z) for y, z in zip(ys, (y for _, y in draws(0)), strict=True))  # seeded
    assert not all(torch.equal(y, z) for y, z in zip(ys, (y for _, y in draws(1)), strict=True))  # per epoch
    x0, y0 = steps[0]
    ref = CifarLoader(images, labels, 100, train=False)
    assert torch.equal(x0, next(iter(ref))[0][y0])  # un-augmented: the normalised images themselves
    # two ranks: each takes its shard of the same global batch (images and augmentation)
    one = draws(0, augment=True, k=3)
    shards = [draws(0, rank=r, world=2, augment=True, k=3) for r in (0, 1)]
    for (x, y), (x_0, y_0), (x_1, y_1) in zip(one, *shards, strict=True):
        assert torch.equal(y[0::2], y_0) and torch.equal(y[1::2], y_1)
        assert torch.equal(x[0::2], x_0) and torch.equal(x[1::2], x_1)
    assert not torch.equal(one[0][0], next(iter(ref))[0][one[0][1]])  # augmented


def test_official_val_augment_augments_architecture_and_selection_batches_and_tags_precision(
    cifar_cache, tmp_path, monkeypatch, mlflow_uri
):
    from mlflow.tracking import MlflowClient

    from harness.searching import run_search

    spy = _Spy(monkeypatch)
    run_search(_cfg(track=True, epochs=1, official_val_augment=True), cifar_cache, tmp_path / "run", progress=False)
    ref = _raw_val(cifar_cache)
    for x in (*spy.arch, spy.evals[0]):  # crop offset 4/4 without a flip is the only identity: p = 1/162 an image
        assert sum(i >= 0 for i in _match(x, ref)) <= len(x) // 4
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bnas-cifar10").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["bnas.precision"] == "fp32"
    assert run.data.params["search.official_val_augment"] == "True"
    assert run.data.params["search.official_val_resample"] == "False"
    assert "precision" not in run.data.metrics and "search/best_val_top1" in run.data.metrics
    # one value per (metric, step): the final search/val_top1 (eval mode) is not the per-iteration arch-batch top-1
    for key in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), key
    assert {"search/arch_top1", "search/arch_loss", "search/val_top1", "val/top1"} <= set(run.data.metrics)


def test_resuming_a_finished_search_writes_every_output_again(cifar_cache, tmp_path):
    """DVC removes a stage's outputs before it runs it again: `--resume` of a finished search (its checkpoint kept)
    must rewrite them all, the per-epoch genotype files included, identical to the first run's."""
    from harness.searching import run_search

    out = tmp_path / "s"
    run_search(_cfg(epochs=2), cifar_cache, out, progress=False)
    names = ["history.csv", "genotype.json", "alphas.json", "alphas_best.json", "alphas_final.json"]
    names += ["genotypes/epoch001.json", "genotypes/epoch002.json"]
    first = {n: (out / n).read_text() for n in names}
    for n in names:
        (out / n).unlink()
    run_search(_cfg(epochs=2), cifar_cache, out, resume=True, progress=False)
    assert {n: (out / n).read_text() for n in names} == first
