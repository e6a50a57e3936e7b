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
    assert (out / "alphas.png").read_bytes()[:4] == b"\x89PNG"
    # the final alphas in the `bnas derive` format re-derive the final genotype
    from harness.searching import derive_from_alphas

    assert json.loads(genotype_to_json(derive_from_alphas(out / "alphas.json"))) == result["genotype_final"]
    assert derive_from_alphas(out / "alphas.json", gamma=3.0) == genotype_from_json(
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
    a = torch.load(out / "checkpoint.pt", weights_only=True)["model"]["net"]
    b = torch.load(run / "checkpoint.pt", weights_only=True)["model"]["net"]
    assert all(torch.equal(a[k], b[k]) for k in a)
