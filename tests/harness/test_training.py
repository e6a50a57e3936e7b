"""`harness/training.py`: the run's precision, global batch and recorded recipe deviations (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from _helpers import tiny_config

from harness.config import TrainConfig, load_config
from harness.data import per_process_batch
from harness.errors import ConfigError
from harness.training import batch_deviation, precision, run_train

REPO = Path(__file__).resolve().parents[2]


def test_runs_are_float32_unless_a_speed_switch_is_set():
    """The release trains in float32: so do the paper profile's search, CIFAR and ImageNet runs."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision(TrainConfig(), cuda) == "fp32" and precision(TrainConfig(), cpu) == "fp32"
    assert precision(TrainConfig(amp=True), cuda) == "bf16" and precision(TrainConfig(amp=True), cpu) == "fp32"
    assert precision(TrainConfig(amp=True, amp_dtype="float16"), cuda) == "fp16"
    assert precision(TrainConfig(cpu_amp=True), cpu) == "bf16"
    params = REPO / "pipelines" / "params.yaml"
    for method in ("bnas_a", "bnas_d", "bireal_resnet18_cifar"):
        c = load_config(params, {"profile": "paper"}, method=method)
        assert not c.train.amp and not c.train.cpu_amp
    assert not load_config(params, {"profile": "paper"}, method="search").search.amp


def test_the_batch_is_global_and_a_deviation_from_the_recipe_is_named():
    assert per_process_batch(1024, 4) == 256 and per_process_batch(64, 1) == 64
    with pytest.raises(ConfigError, match="train.batch_size 100 .global. is not divisible by the 3 processes"):
        per_process_batch(100, 3)
    params = REPO / "pipelines" / "params.yaml"
    paper = load_config(params, {"profile": "paper"}, method="bnas_d").train
    assert paper.batch_size == 1024 and batch_deviation(paper) == ""
    small = load_config(params, {"profile": "paper", "train.batch_size": 256}, method="bnas_d").train
    assert batch_deviation(small) == "global batch 256, recipe bnas_imagenet_paper says 1024"
    quick = load_config(params, method="bnas_a").train  # the quick profile's small batch is a recorded deviation too
    qb = yaml.safe_load(params.read_text())["profiles"]["quick"]["train"]["batch_size"]
    assert qb < 256 and batch_deviation(quick) == f"global batch {qb}, recipe bnas_cifar_paper says 256"


def test_metrics_record_precision_and_no_maximum_over_test_evaluations(cifar_cache, tmp_path):
    cfg = tiny_config(epochs=2, train_subset=256, test_subset=128)
    m = run_train(cfg, cifar_cache, tmp_path / "run", progress=False)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["precision"] == on_disk["precision"] == "fp32" and on_disk["global_batch"] == 64
    assert not any(k.startswith("best/") for k in on_disk)  # a max over test-set evaluations is selection on test


def test_resuming_a_finished_run_writes_every_output_again(cifar_cache, tmp_path):
    """DVC removes a stage's outputs before it runs it again: `--resume` of a finished run (its checkpoint kept) must
    rewrite them all, identical to the first run's."""
    cfg = tiny_config(epochs=1, train_subset=128, test_subset=64)
    out = tmp_path / "run"
    run_train(cfg, cifar_cache, out, progress=False)
    first = {n: (out / n).read_bytes() for n in ("history.csv", "metrics.json", "config.yaml")}
    weights = torch.load(out / "model.pt", weights_only=True)
    for n in ("history.csv", "metrics.json", "config.yaml", "model.pt"):
        (out / n).unlink()
    run_train(cfg, cifar_cache, out, resume=True, progress=False)
    assert (out / "history.csv").read_bytes() == first["history.csv"]
    assert (out / "config.yaml").read_bytes() == first["config.yaml"]
    strip = lambda d: {k: v for k, v in d.items() if not k.startswith("perf/")}  # noqa: E731
    assert strip(json.loads((out / "metrics.json").read_bytes())) == strip(json.loads(first["metrics.json"]))
    again = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(weights[k], again[k]) for k in weights)
