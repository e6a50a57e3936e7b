"""The pipeline's MLflow parent run (harness/pipeline_run.py): the run folders DVC skipped are logged from their
committed files, once, next to the children the stages logged themselves. Run folders: the committed quick-profile
runs under runs/."""

from __future__ import annotations

import shutil
from pathlib import Path

from mlflow.tracking import MlflowClient

from harness.pipeline_run import finish_pipeline_run, run_folders
from harness.tracking import Tracker

ROOT = Path(__file__).resolve().parents[2]


def _runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for rel in ("cifar10/search/seed2", "cifar10/bnas_a/seed0", "cifar10/bnas_a/seed1"):
        shutil.copytree(ROOT / "runs" / rel, root / rel, ignore=shutil.ignore_patterns("*.pt", "*.ckpt"))
    (root / "cifar10" / "bnas_a" / "seed7").mkdir()  # unfinished: no metrics.json
    return root


def test_run_folders_lists_finished_runs_only(tmp_path):
    root = _runs(tmp_path)
    assert [(f, s) for f, s, _ in run_folders(root, "cifar10")] == [("bnas_a", 0), ("bnas_a", 1), ("search", 2)]
    assert list(run_folders(root, "imagenet")) == []


def test_skipped_runs_are_logged_from_their_files_once(tmp_path, mlflow_uri):
    root = _runs(tmp_path)
    tracker = Tracker()
    parent = tracker.pipeline_parent("bnas-cifar10", "quick")
    client = MlflowClient(mlflow_uri)
    exp_id = client.get_run(parent).info.experiment_id
    # the stage that ran in this pipeline run logged its own child: it must not be logged again
    client.create_run(
        exp_id,
        run_name="bnas_a-seed0",
        tags={"mlflow.parentRunId": parent, "bnas.method": "bnas_a", "bnas.seed": "0", "bnas.stage": "train"},
    )
    assert finish_pipeline_run(root, tmp_path, [], "quick") == parent
    assert client.get_run(parent).info.status == "FINISHED"
    children = client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    by_name = {r.info.run_name: r for r in children}
    assert sorted(by_name) == ["bnas_a-seed0", "bnas_a-seed1", "search-seed2"]
    search = by_name["search-seed2"]
    assert search.data.tags["bnas.logged_from"] == "files" and search.data.tags["bnas.stage"] == "search"
    assert search.info.status == "FINISHED"
    assert search.data.params["search.seed"] == "2"
    history = client.get_metric_history(search.info.run_id, "val/top1")
    assert [m.step for m in history] == [1, 2]  # every epoch of history.csv, the final value not logged twice
    arts = {a.path for a in client.list_artifacts(search.info.run_id)}
    assert {"config.yaml", "metrics.json", "history.csv", "genotype.json", "alphas.png"} <= arts
    trained = by_name["bnas_a-seed1"]
    assert trained.data.metrics["val/top1"] > 20 and trained.data.params["train.seed"] == "1"
    assert "bnas_a/top1_mean" in client.get_run(parent).data.metrics


def test_own_recipe_folders_reach_the_parent_run_under_a_name_mlflow_accepts(tmp_path, mlflow_uri):
    """`<method>@paper` (the own-recipe rows): MLflow refuses '@' in a metric name, so the parent run's aggregate is
    `<method>:paper/top1_mean`."""
    root = _runs(tmp_path)
    shutil.copytree(root / "cifar10" / "bnas_a" / "seed1", root / "cifar10" / "bnas_a@paper" / "seed1")
    parent = finish_pipeline_run(root, tmp_path, [], "quick")
    metrics = MlflowClient(mlflow_uri).get_run(parent).data.metrics
    assert metrics["bnas_a:paper/n_seeds"] == 1 and "bnas_a/top1_mean" in metrics


def test_a_folder_is_matched_to_its_stage_run_by_folder_not_by_method(tmp_path, mlflow_uri):
    """The stage of `bnas_a@paper/seed1` tags its run bnas.method=bnas_a (the method) and bnas.run_dir=the folder: the
    parent logs that folder no second time, and still logs `bnas_a/seed1`, which no stage of this pipeline run ran."""
    root = _runs(tmp_path)
    own = root / "cifar10" / "bnas_a@paper" / "seed1"
    shutil.copytree(root / "cifar10" / "bnas_a" / "seed1", own)
    tracker = Tracker()
    parent = tracker.pipeline_parent("bnas-cifar10", "quick")
    client = MlflowClient(mlflow_uri)
    exp_id = client.get_run(parent).info.experiment_id
    tags = {"mlflow.parentRunId": parent, "bnas.method": "bnas_a", "bnas.seed": "1", "bnas.stage": "train"}
    client.create_run(exp_id, run_name="bnas_a-seed1", tags={**tags, "bnas.run_dir": str(own.resolve())})
    finish_pipeline_run(root, tmp_path, [], "quick")
    children = client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    dirs = sorted(Path(r.data.tags["bnas.run_dir"]).relative_to(root.resolve()).as_posix() for r in children)
    assert dirs == [
        "cifar10/bnas_a/seed0",
        "cifar10/bnas_a/seed1",
        "cifar10/bnas_a@paper/seed1",
        "cifar10/search/seed2",
    ]
