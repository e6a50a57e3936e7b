"""DDP through torchrun: 2 CPU processes with the gloo backend, on real CIFAR-10 images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def test_two_process_ddp_keeps_ranks_in_sync(cifar_cache, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]),
    )
    res = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node",
            "2",
            str(HERE / "ddp_worker.py"),
            str(cifar_cache),
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    init = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks diverged at {k}"
        assert torch.equal(r0[k], init[k])  # rank 0's checkpoint holds the same final state
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["world_size"] == 2
    assert m["val/n"] == 250  # the evaluation shards cover each test image exactly once
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 3  # written once, by rank 0


def test_bnas_train_relaunches_itself_under_torchrun_when_nproc_per_node_is_set(cifar_cache, tmp_path):
    """A DVC stage is one `bnas train` call; train.nproc_per_node > 1 makes that call a torchrun launch."""
    params = tmp_path / "params.yaml"
    params.write_text(
        "data: {train_subset: 128, test_subset: 64}\n"
        "train: {model: test_resnet, epochs: 1, batch_size: 32, device: cpu, threads: 1, nproc_per_node: 2}\n"
        "tracking: {enabled: false}\n"
    )
    bnas = Path(sys.executable).parent / "bnas"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    res = subprocess.run(
        [str(bnas), "train", "--params", str(params), "--data", str(cifar_cache), "--out", str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["val/n"] == 64
