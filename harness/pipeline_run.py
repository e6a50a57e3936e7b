"""The MLflow parent run of one `dvc repro`: its child runs, the runs DVC did not re-run, and its aggregates.

Every training and search stage of `dvc repro` opens its MLflow run as a child of the pipeline's parent run
(:meth:`harness.tracking.Tracker.pipeline_parent`). DVC skips the stages whose outputs are committed and up to date
(on a fresh clone: every search), so those rows of the tables would have no run in the UI. The last stage
(`bnas figures --finish-pipeline-run`) therefore logs each such run folder from its committed files, as a child
tagged `bnas.logged_from = files`: its resolved config as params, its history per epoch and final metrics, and its
files as artifacts (a search's also its alpha heatmaps). Then it logs each method's aggregate, the tables and the
figures to the parent and finishes it.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from harness.errors import DataError
from harness.figures import alpha_heatmaps
from harness.io import read_history
from harness.stats import summarize
from harness.tables import collect_runs

__all__ = ["run_folders", "log_committed_runs", "finish_pipeline_run"]

DATASETS = ("cifar10", "imagenet")
# files of a run folder logged as artifacts (those that exist)
ARTIFACTS = (
    "config.yaml",
    "metrics.json",
    "history.csv",
    "genotype.json",
    "genotype_derived.json",
    "alphas.json",
    "alphas_best.json",
    "alphas_final.json",
)


def run_folders(runs_root: str | Path, dataset: str) -> Iterator[tuple[str, int, Path]]:
    """(run folder name, seed, path) of every finished run (a metrics.json) under `runs_root/dataset/*/seed*`."""
    base = Path(runs_root) / dataset
    if not base.is_dir():
        return
    for sdir in sorted(base.glob("*/seed*/metrics.json")):
        seed = sdir.parent.name.removeprefix("seed")
        if seed.isdigit():
            yield sdir.parent.parent.name, int(seed), sdir.parent


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def _read_folder(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[int, dict[str, float]]]:
    try:
        metrics = json.loads((path / "metrics.json").read_text())
        cfg = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {}
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise DataError(f"{path}: unreadable run files ({e})") from None
    history = read_history(path / "history.csv") if (path / "history.csv").is_file() else {}
    return metrics, cfg or {}, history


def _numbers(row: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in row.items():
        if k == "epoch" or v in (None, "") or isinstance(v, bool):
            continue
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(x):
            out[k] = x
    return out


def log_committed_runs(tracker: Any, parent_id: str, runs_root: str | Path, dataset: str, profile: str) -> list[str]:
    """Log as children of `parent_id` the finished run folders of `runs_root/dataset` that have no child run there
    yet (one tagged with the same bnas.run_dir): the runs DVC skipped. Returns the new run ids."""
    children = tracker.children(parent_id)
    have_dirs = {str(Path(t["bnas.run_dir"]).resolve()) for t in children if t.get("bnas.run_dir")}
    # a child without bnas.run_dir (made before the tag existed) is matched by method, seed and stage kind
    have = {
        (t.get("bnas.method"), t.get("bnas.seed"), t.get("bnas.stage") == "search")
        for t in children
        if not t.get("bnas.run_dir")
    }
    new = []
    for folder, seed, path in run_folders(runs_root, dataset):
        search = folder.startswith("search")
        metrics, cfg, history = _read_folder(path)
        seed = int((cfg.get("search" if search else "train") or {}).get("seed", seed))
        if str(path.resolve()) in have_dirs or (folder, str(seed), search) in have:
            continue
        points: list[tuple[str, float, int]] = []
        for step, h in history.items():
            points += [(k, v, step) for k, v in _numbers(h).items()]
        final = _numbers(metrics)
        last = int(final.get("epochs", final.get("epoch", max((p[2] for p in points), default=0))))
        logged = set(points)
        points += [(k, v, last) for k, v in final.items() if (k, v, last) not in logged]
        tags = {
            "bnas.method": folder,
            "bnas.seed": str(seed),
            "bnas.dataset": dataset,
            "bnas.profile": profile,
            "bnas.stage": "search" if search else "train",
            "bnas.logged_from": "files",
            "bnas.run_dir": str(path.resolve()),
            "mlflow.note.content": f"Logged from the committed files of {path}: DVC did not re-run this stage.",
        }
        artifacts = [path / name for name in ARTIFACTS if (path / name).is_file()]
        with tempfile.TemporaryDirectory() as tmp:  # a search's alpha heatmaps (alphas.png), as `bnas search` logs them
            png = alpha_heatmaps(path, Path(tmp) / "alphas.png") if search else None
            run_id = tracker.log_finished_run(
                parent_id, f"{folder}-seed{seed}", tags, _flatten(cfg), points, artifacts + ([png] if png else [])
            )
        new.append(run_id)
    return new


def metric_prefix(folder: str) -> str:
    """A run folder's name as an MLflow metric prefix: MLflow refuses '@' in metric names, so the own-recipe rows'
    `<method>@paper` is logged as `<method>:paper`."""
    return folder.replace("@", ":")


def finish_pipeline_run(
    runs_root: str | Path, results: str | Path, figures: list[Path], profile: str, experiment_prefix: str = "bnas"
) -> str | None:
    """Log the runs DVC skipped (:func:`log_committed_runs`), each method's aggregate (mean/std/n of top-1 over seeds),
    the tables and figures to the MLflow parent run of this pipeline run in each dataset's experiment (see
    :meth:`harness.tracking.Tracker.pipeline_parent`), and finish them. Returns the CIFAR-10 parent's run id."""
    from harness.tracking import Tracker

    results = Path(results)
    first = None
    for dataset in DATASETS:
        tracker = Tracker()
        runs = collect_runs(runs_root, dataset)
        has_runs = next(run_folders(runs_root, dataset), None) is not None
        run_id = tracker.pipeline_parent(
            f"{experiment_prefix}-{dataset}", profile, create=dataset == "cifar10" or has_runs
        )
        if run_id is None:
            continue
        log_committed_runs(tracker, run_id, runs_root, dataset, profile)
        tracker.run_id = run_id
        metrics: dict[str, float] = {}
        for folder, r in runs.items():
            s = summarize(r.top1)
            name = metric_prefix(folder)
            metrics[f"{name}/top1_mean"] = s.mean
            metrics[f"{name}/n_seeds"] = float(s.n)
            if s.n > 1:
                metrics[f"{name}/top1_std"] = s.std
        if metrics:
            tracker.log_metrics(metrics, step=0)
        if dataset == "cifar10":
            first = run_id
            for p in sorted(results.glob("*.md")):
                tracker.log_artifact(p, "tables")
            for p in figures:
                tracker.log_artifact(p, "figures")
        elif (results / "imagenet.md").is_file():
            tracker.log_artifact(results / "imagenet.md", "tables")
        tracker.end("FINISHED")
    return first
