"""MLflow tracking: the only module that imports mlflow. MLflow is a viewer; tables are built from metrics files.

Default store: `sqlite:///<project>/mlflow.db` with artifacts in `<project>/mlartifacts/` (both git-ignored).
`MLFLOW_TRACKING_URI` points runs at a team server instead. One experiment per dataset (`bnas-cifar10`), run names
`<method>-s<seed>-<stage>`, tags under our own `bnas.` prefix. Two `mlflow.` tags are set: the run tag
`mlflow.parentRunId`, which nests the runs of one `dvc repro` under a parent run (`pipeline-<profile>`) that the report
stage finishes, and the experiment tag `mlflow.experimentKind` (see EXPERIMENT_KIND).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "Tracker",
    "NullTracker",
    "project_root",
    "default_tracking_uri",
    "git_info",
    "run_ui",
    "ui_urls",
    "supervise",
    "EXPERIMENT_KIND_TAG",
    "EXPERIMENT_KIND",
    "GIT_DIRTY_PATHSPECS",
]

log = logging.getLogger(__name__)

# The experiment kind MLflow 3 reads from an experiment tag: "genai_development" (GenAI side nav: Overview, Traces, ...)
# or "custom_model_development" (the "Machine learning" experiment page: the training-runs table). Found in the UI
# bundle of mlflow 3.17.2, mlflow/server/js/build/static/js/main.c2f5f8d4.js: line 2, module 67593, the enum
#   GENAI_DEVELOPMENT="genai_development",e.CUSTOM_MODEL_DEVELOPMENT="custom_model_development",...
# and line 24, module 31080 (`Fi`), which reads the tag: `e.find(e=>"mlflow.experimentKind"===e.key)`; mlflow sets it
# the same way in mlflow/demo/generators/traces.py:329 (`set_experiment_tag(..., "mlflow.experimentKind", ...)`).
# BUT in the OSS 3.17.2 UI `Fi` only reads the tag when the flag of the sidebar's workflow switch is off, and that flag
# is hard-wired on (main.c2f5f8d4.js line 2, module 89511: `Z0:()=>R`, `R=()=>!0`): `Fi` then maps the *workflow type*
# to a kind, taken from `?workflowType=` in the URL, else the browser's localStorage key `mlflow.workflowType_v1`,
# default "genai" (line 2, module 7975). The landing tab follows from it in static/js/5439.b5816bbb.chunk.js (module
# 24546; the same code is in experimentPage.20d52159.chunk.js): `let l=s.fM.Runs;Y===s.Gk.GENAI_DEVELOPMENT&&(l=...
# s.fM.Overview:s.fM.Traces)`. So the tag alone does not move a 3.17.2 UI off "Overview": `bnas ui` prints each
# experiment's URL with `?workflowType=machine_learning` (see ui_urls), which lands on the runs table; the tag keeps
# the experiment classified right wherever MLflow reads it (the experiment-kind selector, builds without the switch).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# What `bnas.git_dirty` means: the code or the params differ from the commit. `git status` is restricted to these
# pathspecs (an allow-list rather than ':(exclude)' entries for runs/, results/ and the dvc.lock files): the pipeline
# rewrites tracked outputs (runs/, results/, dvc.lock, pipelines/**/dvc.lock) on every `dvc repro`, and any other new
# output folder would make an exclude list silently wrong again, while a new code folder is a deliberate edit here.
GIT_DIRTY_PATHSPECS: tuple[str, ...] = (
    "harness",
    "methods",
    ":(glob)pipelines/**/params.yaml",
    "dvc.yaml",
    ":(glob)pipelines/**/dvc.yaml",
    "pyproject.toml",
    "constraints.txt",
    "Makefile",
)


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


def _artifact_root(uri: str, root: Path) -> Path | None:
    """Where a sqlite store's artifacts go: `<root>/mlartifacts` for the project's store, else next to the db file."""
    if not uri.startswith("sqlite:///"):
        return None
    if "MLFLOW_TRACKING_URI" not in os.environ:
        return root / "mlartifacts"
    return Path(uri[len("sqlite:///") :]).parent / "mlartifacts"


def git_info(root: Path | None = None, pathspecs: Sequence[str] = GIT_DIRTY_PATHSPECS) -> dict[str, str]:
    """Current commit, and whether the code or params differ from it ("unknown" outside git).

    `dirty` is "true" when a tracked file under `pathspecs` (the code and config: GIT_DIRTY_PATHSPECS) is modified,
    staged, deleted or renamed, or an untracked file that .gitignore does not ignore sits there; pipeline outputs
    (runs/, results/, the dvc.lock files) are outside the pathspecs, so `dvc repro` rewriting them keeps it "false".
    """
    root = root or project_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all", "--", *pathspecs],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": "unknown", "dirty": "unknown"}
    if commit.returncode != 0:
        return {"commit": "unknown", "dirty": "unknown"}
    dirty = "unknown" if status.returncode != 0 else str(bool(status.stdout.strip())).lower()
    return {"commit": commit.stdout.strip(), "dirty": dirty}


class NullTracker:
    """Tracks nothing (tracking disabled, or a non-zero rank)."""

    run_id: str | None = None

    def start(
        self,
        *,
        experiment: str,
        run_name: str,
        tags: Mapping[str, Any],
        params: Mapping[str, Any],
        run_id: str | None = None,
    ) -> str | None:
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
        self._logged: dict[tuple[str, str, int], float] = {}  # (run id, key, step) -> value logged by this process

    def _experiment_id(self, name: str) -> str:
        """The id of experiment `name`, created (artifacts next to a sqlite store) when missing; either way it carries
        the EXPERIMENT_KIND tag (set on an existing experiment that lacks one; another kind set by hand is kept)."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if EXPERIMENT_KIND_TAG not in exp.tags:
                try:
                    self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
                except Exception as e:  # noqa: BLE001 - a UI hint: never fail a run over it (e.g. a read-only server)
                    log.warning("could not tag experiment %s with %s: %s", name, EXPERIMENT_KIND_TAG, e)
            return exp.experiment_id
        arts = _artifact_root(self.uri, self.root)
        return self.client.create_experiment(
            name,
            artifact_location=(arts / name).as_uri() if arts is not None else None,
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
        )

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
        from mlflow.entities import RunTag

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
            self._log_params(self.run_id, params)
        else:
            self.client.log_batch(self._current(), tags=[RunTag(k, str(v)) for k, v in tags.items()])
        return self._current()

    def _current(self) -> str:
        """The id of the run this tracker writes to (one must have been started)."""
        if self.run_id is None:
            raise RuntimeError("no MLflow run started: call Tracker.start first")
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

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Log `params` in batches of 100 (MLflow's per-request limit), values cut at its 6,000-character limit."""
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def children(self, parent_id: str) -> list[dict[str, str]]:
        """The tags of every child run of `parent_id` (runs tagged mlflow.parentRunId = it)."""
        exp_id = self.client.get_run(parent_id).info.experiment_id
        runs = self.client.search_runs(
            [exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=5000
        )
        return [dict(r.data.tags) for r in runs]

    def log_finished_run(
        self,
        parent_id: str,
        run_name: str,
        tags: Mapping[str, str],
        params: Mapping[str, str],
        metrics: Sequence[tuple[str, float, int]],
        artifacts: Sequence[Path],
    ) -> str:
        """Log a whole finished run at once as a child of `parent_id`: tags, params, (key, value, step) metrics and
        artifact files. Returns its run id."""
        import time

        from mlflow.entities import Metric

        exp_id = self.client.get_run(parent_id).info.experiment_id
        run = self.client.create_run(exp_id, run_name=run_name, tags={**tags, "mlflow.parentRunId": parent_id})
        run_id = run.info.run_id
        self._log_params(run_id, params)
        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, int(step)) for k, v, step in metrics]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(run_id, metrics=batch[i : i + 1000])
        for path in artifacts:
            self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, status="FINISHED")
        return run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log `metrics` at `step`, skipping a value this tracker already logged for the same run, key and step.

        MLflow keeps every (value, timestamp) logged at a step, so logging the same value again adds a second, identical
        point to the curve (training logs the last epoch's row, then the final metrics, which repeat keys such as
        val/top1, at the same step). A different value at the same step is still logged. The memory is this process's:
        a resumed run may repeat a value logged before the interruption (harmless: it is the same value).
        """
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = []
        for k, v in metrics.items():
            value, seen = float(v), self._logged.get((self.run_id or "", k, step))
            if seen is not None and (seen == value or (math.isnan(seen) and math.isnan(value))):
                continue
            self._logged[(self.run_id or "", k, step)] = value
            batch.append(Metric(k, value, ts, step))
        if batch:
            self.client.log_batch(self._current(), metrics=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self._current(), tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)


def ui_urls(uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[tuple[str, str]]:
    """(experiment name, URL of its runs table) for each experiment with runs in the store at `uri`.

    The URLs carry `?workflowType=machine_learning`: MLflow 3.17.2's UI picks an experiment's tabs from that workflow
    type (URL, else the browser's last choice, default GenAI) rather than from the `mlflow.experimentKind` tag (see
    EXPERIMENT_KIND), so a plain experiment link lands on the GenAI "Overview" (Traces 0, "Detect Issues").
    """
    warnings.filterwarnings("ignore", module="mlflow")
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    out = []
    for exp in client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=100, order_by=["name ASC"]):
        if client.search_runs([exp.experiment_id], max_results=1):
            out.append((exp.name, f"{base}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"))
    return out


_FORWARDED: dict[int, int] = {
    signal.SIGTERM: signal.SIGTERM,
    signal.SIGINT: signal.SIGINT,
    signal.SIGHUP: signal.SIGTERM,
}


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_group(pgid: int) -> None:
    """Collect the exit status of the group's processes that are our children (orphans adopted as subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _set_subreaper(on: bool) -> bool:
    """Linux: make this process the reaper of its orphaned descendants (PR_SET_CHILD_SUBREAPER), so the server's
    processes that outlive their parent are collected here instead of lingering as zombies of an init that does not
    reap (containers). Returns whether it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(36, int(on), 0, 0, 0) == 0  # 36 = PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def supervise(cmd: Sequence[str], env: Mapping[str, str] | None = None, grace_s: float = 10.0) -> int:
    """Run `cmd` in its own session and process group and wait for it; return its exit code (128 + N when a signal
    N ended it).

    SIGTERM and SIGINT sent to this process are forwarded to the child's whole group (the child and everything it
    started, e.g. uvicorn's workers), SIGHUP as SIGTERM (uvicorn's supervisor takes SIGHUP as "restart the workers",
    uvicorn/supervisors/multiprocess.py). What is still running `grace_s` after the first signal is killed (SIGKILL);
    processes the child leaves behind when it exits get SIGTERM, then SIGKILL after `grace_s`. It returns once no
    process of the group is left.
    """
    received: list[int] = []
    proc: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        if proc is not None:
            _signal_group(proc.pid, _FORWARDED[signum])

    previous: dict[int, Any] = {}
    try:
        for s in _FORWARDED:
            previous[s] = signal.signal(s, forward)
    except ValueError:  # not the main thread: signals stay with whoever handles them there
        pass
    subreaper = _set_subreaper(True)
    try:
        proc = subprocess.Popen(list(cmd), env=None if env is None else dict(env), start_new_session=True)
        if received:  # a signal came while the child was being started
            _signal_group(proc.pid, _FORWARDED[received[0]])
        kill_at: float | None = None  # grace_s after the first signal
        while True:
            try:
                rc = proc.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                pass
            if received and kill_at is None:
                kill_at = time.monotonic() + grace_s
            if kill_at is not None and time.monotonic() > kill_at:
                name = signal.Signals(received[0]).name
                log.warning("process group %d still running %.0f s after %s: killing it", proc.pid, grace_s, name)
                _signal_group(proc.pid, signal.SIGKILL)
                kill_at = math.inf
        if kill_at is None:  # the child ended on its own: what it left behind gets SIGTERM, then grace_s
            _signal_group(proc.pid, signal.SIGTERM)
            kill_at = time.monotonic() + grace_s
        _stop_group(proc.pid, kill_at)
        return rc if rc >= 0 else 128 - rc
    finally:
        if proc is not None and proc.returncode is None:  # an error in here: leave nothing running
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
            _stop_group(proc.pid, 0.0)
        for s, h in previous.items():
            signal.signal(s, h)
        if subreaper:
            _set_subreaper(False)


def _stop_group(pgid: int, kill_at: float) -> None:
    """Wait until process group `pgid` (its leader has exited) is empty, reaping what we adopted: SIGKILL what is left
    at time.monotonic() `kill_at`, give up (with a warning) 5 s after that."""
    give_up = math.inf
    while True:
        _reap_group(pgid)
        if not _group_alive(pgid):
            return
        now = time.monotonic()
        if now > give_up:
            log.warning("process group %d: processes left that cannot be reaped here", pgid)
            return
        if now > kill_at and give_up == math.inf:
            _signal_group(pgid, signal.SIGKILL)
            give_up = now + 5.0
        time.sleep(0.05)


def run_ui(
    host: str = "127.0.0.1",
    port: int = 5000,
    uri: str | None = None,
    workers: int | None = None,
    grace_s: float = 10.0,
) -> int:
    """Start the MLflow UI on the harness's store, bound to `host` (loopback by default). Blocks until the server
    exits or this process gets SIGTERM/SIGINT/SIGHUP (forwarded to the server's whole process group, see
    :func:`supervise`); returns the server's exit code. Prints each experiment's runs-table URL first (`ui_urls`)."""
    root = project_root()
    uri = uri or default_tracking_uri(root)
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = ["mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    arts = _artifact_root(uri, root)
    if arts is not None:
        cmd += ["--default-artifact-root", arts.as_uri()]
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    if mlflow_bin.exists():
        cmd[0] = str(mlflow_bin)
    try:
        for name, url in ui_urls(uri, host, port):
            print(f"{name}: {url}", flush=True)
    except Exception as e:  # noqa: BLE001 - the links are a convenience; the server reports a bad store itself
        log.debug("cannot list the experiments of %s: %s", uri, e)
    return supervise(cmd, env, grace_s)
