"""MLflow tracking against a real sqlite store (no mocks)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from _helpers import CrashAfter, PoisonWeights, tiny_config
from mlflow.tracking import MlflowClient

from harness.errors import NonFiniteLossError
from harness.training import run_train

REPO = Path(__file__).resolve().parents[2]


def _runs(uri: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bnas-cifar10")
    assert exp is not None
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_run_logs_params_metrics_tags_artifacts(cifar_cache, tmp_path, mlflow_uri):
    run_train(tiny_config(epochs=2, track=True), cifar_cache, tmp_path / "run", method="tiny", progress=False)
    client, runs = _runs(mlflow_uri)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-s0-train"
    assert run.data.params["train.model"] == "test_resnet" and run.data.params["train.lr"] == "0.05"
    for key in (
        "bnas.method",
        "bnas.dataset",
        "bnas.seed",
        "bnas.git_commit",
        "bnas.git_dirty",
        "bnas.data_fingerprint",
        "bnas.torch",
        "bnas.device",
        "bnas.world_size",
    ):
        assert key in run.data.tags, key
    assert run.data.tags["bnas.dataset"] == "cifar10" and run.data.tags["bnas.device"] == "cpu"
    assert run.data.tags["bnas.precision"] == "fp32" and run.data.tags["bnas.global_batch"] == "64"
    assert run.data.tags["bnas.batch_deviation"] == "none"  # no recipe: nothing to deviate from
    for key in ("train/loss", "train/top1", "val/loss", "val/top1", "val/top5", "lr", "perf/train_img_s"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert 1 in steps and 2 in steps, key
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "history.csv"} <= arts
    assert (tmp_path / "mlartifacts" / "bnas-cifar10").is_dir()  # artifacts sit next to the configured store


def test_crash_marks_failed_and_resume_continues_the_same_run(cifar_cache, tmp_path, mlflow_uri):
    cfg = tiny_config(epochs=2, track=True)
    with pytest.raises(RuntimeError):
        run_train(cfg, cifar_cache, tmp_path / "run", hooks=[CrashAfter(0)], progress=False)
    client, runs = _runs(mlflow_uri)
    assert [r.info.status for r in runs] == ["FAILED"]
    run_train(cfg, cifar_cache, tmp_path / "run", resume=True, progress=False)
    client, runs = _runs(mlflow_uri)
    assert [r.info.status for r in runs] == ["FINISHED"]
    steps = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "val/top1"))
    assert steps == [1, 2, 2]  # epochs 1 and 2, then the final value at the last step


def test_nan_marks_failed(cifar_cache, tmp_path, mlflow_uri):
    with pytest.raises(NonFiniteLossError):
        run_train(
            tiny_config(epochs=1, track=True), cifar_cache, tmp_path / "r", hooks=[PoisonWeights(2)], progress=False
        )
    _, runs = _runs(mlflow_uri)
    assert [r.info.status for r in runs] == ["FAILED"]


def test_only_tracking_imports_mlflow():
    importers = []
    for pkg in ("harness", "methods"):
        for f in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text())):
                mods = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                )
                if any(m.split(".")[0] == "mlflow" for m in mods):
                    importers.append(f.relative_to(REPO).as_posix())
    assert sorted(set(importers)) == ["harness/tracking.py"]
