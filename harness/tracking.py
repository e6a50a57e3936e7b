"""MLflow tracking: the only module that imports mlflow. MLflow is a viewer; tables are built from metrics files.

Default store: `sqlite:///<project>/mlflow.db` with artifacts in `<project>/mlartifacts/` (both git-ignored).
`MLFLOW_TRACKING_URI` points runs at a team server instead. One experiment per dataset (`bnas-cifar10`), run names
`<method>-s<seed>-<stage>`, tags under our own `bnas.` prefix; the one `mlflow.` tag set is `mlflow.parentRunId`,
which nests the runs of one `dvc repro` under a parent run (`pipeline-<profile>`) that the report stage finishes.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["Tracker", "NullTracker", "project_root", "default_tracking_uri", "git_info", "run_ui"]

log = logging.getLogger(__name__)


def project_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding dvc.yaml or .git; else `start`."""
    here = Path(start or os.getcwd()).resolve()
    for p in (here, *here.parents):
        if (p / "dvc.yaml").exists() or (p / ".git").exists():
            return p
    return here


def default_tracking_uri(root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI when set, else the project's embedded sqlite store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(root or project_root()) / 'mlflow.db'}"


def git_info(root: Path | None = None) -> dict[str, str]:
    """Current commit and whether the work tree has uncommitted changes ("unknown" outside git)."""
    root = root or project_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": "unknown", "dirty": "unknown"}
    if commit.returncode != 0:
        return {"commit": "unknown", "dirty": "unknown"}
    return {"commit": commit.stdout.strip(), "dirty": str(bool(dirty.stdout.strip())).lower()}


class NullTracker:
    """Tracks nothing (tracking disabled, or a non-zero rank)."""

    run_id: str | None = None

    def start(self, **_: Any) -> str | None:
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


class Tracker(NullTracker):
    """One MLflow run, driven through `MlflowClient` (no global fluent state)."""

    def __init__(self, uri: str | None = None, root: Path | None = None) -> None:
        warnings.filterwarnings("ignore", module="mlflow")
        warnings.filterwarnings("ignore", message=".*SADeprecationWarning.*")
        from mlflow.tracking import MlflowClient

        self.root = root or project_root()
        self.uri = uri or default_tracking_uri(self.root)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id = None

    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        artifact_location = None
        if self.uri.startswith("sqlite:///") and "MLFLOW_TRACKING_URI" not in os.environ:
            artifact_location = (self.root / "mlartifacts" / name).as_uri()
        elif self.uri.startswith("sqlite:///"):
            artifact_location = (Path(self.uri[len("sqlite:///") :]).parent / "mlartifacts" / name).as_uri()
        return self.client.create_experiment(name, artifact_location=artifact_location)

    def start(
        self,
        *,
        experiment: str,
        run_name: str,
        tags: Mapping[str, Any],
        params: Mapping[str, Any],
        run_id: str | None = None,
    ) -> str:
        """Open a new run, or reopen `run_id` when resuming. Returns the run id."""
        from mlflow.entities import Param, RunTag

        if run_id is not None:
            try:
                self.client.get_run(run_id)
                self.client.update_run(run_id, status="RUNNING")
                self.run_id = run_id
            except Exception:  # noqa: BLE001 - a run from another store: start a new one
                log.warning("MLflow run %s not found in %s; starting a new run", run_id, self.uri)
                run_id = None
        if run_id is None:
            exp_id = self._experiment_id(experiment)
            tags = {k: str(v) for k, v in tags.items()}
            profile = tags.get("bnas.profile")
            if profile and os.environ.get("DVC_STAGE"):  # a stage of `dvc repro`: nest under the pipeline's run
                tags["mlflow.parentRunId"] = self.pipeline_parent(experiment, profile)
            run = self.client.create_run(exp_id, run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
            items = [Param(k, str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i : i + 100])
        else:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        return self.run_id

    def pipeline_parent(self, experiment: str, profile: str, create: bool = True) -> str | None:
        """The parent run of the current pipeline run: the newest RUNNING run tagged bnas.role=pipeline with this
        profile in `experiment`, created by the first stage that asks (the report stage finishes it)."""
        exp_id = self._experiment_id(experiment)
        runs = self.client.search_runs(
            [exp_id],
            filter_string=f"tags.`bnas.role` = 'pipeline' and tags.`bnas.profile` = '{profile}' "
            "and attributes.status = 'RUNNING'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            return runs[0].info.run_id
        if not create:
            return None
        git = git_info(self.root)
        run = self.client.create_run(
            exp_id,
            run_name=f"pipeline-{profile}",
            tags={"bnas.role": "pipeline", "bnas.profile": profile, "bnas.git_commit": git["commit"]},
        )
        return run.info.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)


def run_ui(host: str = "127.0.0.1", port: int = 5000, uri: str | None = None) -> int:
    """Start the MLflow UI on the harness's store, bound to `host` (loopback by default). Blocks; returns exit code."""
    root = project_root()
    uri = uri or default_tracking_uri(root)
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = ["mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if uri.startswith("sqlite:///"):
        cmd += ["--default-artifact-root", (root / "mlartifacts").as_uri()]
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    if mlflow_bin.exists():
        cmd[0] = str(mlflow_bin)
    return subprocess.call(cmd, env=env)
