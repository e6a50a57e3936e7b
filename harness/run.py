"""One run's lifecycle, shared by `bnas train` (harness/training.py) and `bnas search` (harness/searching.py).

A run folder holds `config.yaml` (the resolved config), `checkpoint.pt` (every epoch, written atomically),
`history.csv` (one row an epoch) and `metrics.json` (the final metrics), next to what the command itself writes
(`model.pt`, the search's genotypes and alphas). :class:`RunLifecycle` owns the shared part: the code digest, the
resume decision (a checkpoint made with another config or other code is renamed `checkpoint.stale.pt`, never silently
reused), the tags, the MLflow run (opened, re-opened on resume, closed with its status: FINISHED, FAILED, or KILLED on
an interrupt), the per-epoch checkpoint and history, and the final metrics. Only the main process writes files or
talks to MLflow.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import resource
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

import methods
from harness.allocator import cpu_allocator_setting
from harness.checkpoint import load_checkpoint, save_checkpoint
from harness.config import Config, config_to_dict, flatten, save_config
from harness.distributed import Runtime
from harness.io import atomic_write_json, atomic_write_text
from harness.tracking import NullTracker, Tracker, git_info
from methods.binary.int8_conv import int8_conv_enabled

__all__ = [
    "PERF_PREFIX",
    "RunLifecycle",
    "code_digest",
    "make_tracker",
    "config_diff",
    "numeric",
    "peak_memory_mb",
    "process_settings",
    "run_tags",
    "write_history",
]

log = logging.getLogger(__name__)

PERF_PREFIX = "perf/"  # timing/memory metrics: they differ between identical runs, unlike the accuracy metrics


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: max allocated CUDA memory on GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def code_digest() -> str:
    """sha256 (16 hex digits) of the harness and methods source files: a checkpoint from other code is not resumed."""
    h = hashlib.sha256()
    for pkg in (Path(__file__).parent, Path(methods.__file__).parent):
        for f in sorted(pkg.rglob("*.py")):
            h.update(f.relative_to(pkg.parent).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """`key: old -> new` for every flattened key whose value differs between two config dicts."""
    fa, fb = flatten(dict(a)), flatten(dict(b))
    return [f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}" for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def write_history(path: Path, history: Sequence[Mapping[str, Any]]) -> None:
    """history.csv, atomically: one row an epoch, the columns in order of first appearance (a column that an epoch
    did not measure, e.g. validation between `eval_interval`s, is empty there)."""
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    atomic_write_text(path, buf.getvalue())


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The entries MLflow can plot: numbers, not strings (a genotype, a precision) and not the epoch counter."""
    return {
        k: v for k, v in metrics.items() if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def make_tracker(cfg: Config, rt: Runtime) -> Any:
    """An MLflow :class:`harness.tracking.Tracker` on the main process when `tracking.enabled`, else None (nothing is
    tracked)."""
    if not (cfg.tracking.enabled and rt.is_main):
        return None
    return Tracker()


def process_settings() -> dict[str, Any]:
    """The process-wide switches that change numerics or memory behaviour and that no config key sets: the exact int8
    CPU path of the binary convs (`BNAS_INT8_CONV`, read at import), the CPU allocator setting
    (`BNAS_KEEP_FREED_MEMORY`) and the CUDA allocator's (`PYTORCH_CUDA_ALLOC_CONF`). Recorded in every run's
    config.yaml (`environment`) and tags."""
    return {
        "int8_conv": int8_conv_enabled(),
        "cpu_allocator": cpu_allocator_setting(),
        "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
    }


def run_tags(
    cfg: Config,
    rt: Runtime,
    *,
    method: str,
    stage: str,
    seed: int,
    dataset: str,
    fingerprint: str,
    precision: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The `bnas.*` tags of a run: what ran (method, stage, seed, profile, DVC stage), on what (data fingerprint,
    device, processes, precision, torch) and from which code (commit, and whether code or params differ from it)."""
    if cfg.tracking.enabled and rt.is_main:
        git = git_info()
    else:
        git = {"commit": "unknown", "dirty": "unknown"}
    return {
        "bnas.method": method,
        "bnas.dataset": dataset,
        "bnas.seed": seed,
        "bnas.profile": cfg.profile,
        "bnas.stage": stage,
        "bnas.dvc_stage": os.environ.get("DVC_STAGE", ""),
        "bnas.git_commit": git["commit"],
        "bnas.git_dirty": git["dirty"],
        "bnas.data_fingerprint": fingerprint,
        "bnas.torch": torch.__version__,
        "bnas.device": str(rt.device),
        "bnas.world_size": rt.world_size,
        "bnas.precision": precision,
        **{f"bnas.{k}": v for k, v in process_settings().items()},
        **(extra or {}),
    }


class RunLifecycle:
    """One run folder and its MLflow run, from resume to final metrics.

    Use::

        run = RunLifecycle(cfg, out, rt, experiment=..., run_name=..., tags=..., tracker=make_tracker(cfg, rt))
        state = run.resumable_state(resume)      # None: start afresh
        run.start()                              # config.yaml, the MLflow run
        with run:                                # the run's status: FINISHED, FAILED or KILLED
            for epoch in ...:
                run.end_epoch(row, {...})        # history, checkpoint.pt, history.csv, MLflow metrics
            run.finish(metrics, artifacts)       # metrics.json, final MLflow metrics and artifacts
    """

    def __init__(
        self,
        cfg: Config,
        out: str | Path,
        rt: Runtime,
        *,
        experiment: str,
        run_name: str,
        tags: Mapping[str, Any],
        tracker: Any = None,
    ) -> None:
        """`tracker`: an MLflow tracker (see :func:`make_tracker`); None tracks nothing."""
        self.out, self.rt = Path(out), rt
        self.cfg = cfg
        self.checkpoint_path = self.out / "checkpoint.pt"
        self.config = config_to_dict(cfg)
        self.digest = code_digest()
        # bnas.run_dir: the folder, which the pipeline's parent run matches its committed folders against
        self.experiment, self.run_name = experiment, run_name
        self.tags = {**dict(tags), "bnas.run_dir": str(self.out.resolve())}
        self.tracker = tracker if (tracker is not None and rt.is_main) else NullTracker()
        self.run_id: str | None = None
        self.history: list[dict[str, Any]] = []

    @property
    def is_main(self) -> bool:
        return self.rt.is_main

    def resumable_state(self, resume: bool, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The checkpoint to resume from: `out/checkpoint.pt` when `resume` is asked and it was made with this config
        and this code (its history and MLflow run id are taken over), else None. One made otherwise is renamed
        `checkpoint.stale.pt`, with a warning naming the differing keys, and the run starts afresh."""
        if not (resume and self.checkpoint_path.exists()):
            return None
        state = load_checkpoint(self.checkpoint_path, map_location=map_location)
        diff = config_diff(state.get("config", {}), self.config)
        if state.get("code_digest") != self.digest:
            diff.append(f"code: {state.get('code_digest')} -> {self.digest}")
        if diff:
            log.warning(
                "%s was made with a different config (%s); keeping it as checkpoint.stale.pt and starting afresh",
                self.checkpoint_path,
                "; ".join(diff[:5]),
            )
            if self.rt.distributed:
                torch.distributed.barrier()
            if self.is_main:
                os.replace(self.checkpoint_path, self.out / "checkpoint.stale.pt")
            return None
        self.history = list(state.get("history", []))
        self.run_id = state.get("mlflow_run_id")
        log.info("resuming from %s at epoch %d", self.checkpoint_path, int(state["epoch"]))
        return state

    def start(self) -> None:
        """Write `config.yaml` and open the MLflow run (the checkpoint's run again when resuming)."""
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out / "config.yaml", environment=process_settings())
        self.run_id = self.tracker.start(
            experiment=self.experiment,
            run_name=self.run_name,
            tags=self.tags,
            params=flatten(self.config),
            run_id=self.run_id,
        )

    def __enter__(self) -> RunLifecycle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "KILLED"
        else:
            status = "FAILED"
        self.tracker.end(status)

    def end_epoch(self, row: dict[str, Any], state: Mapping[str, Any]) -> None:
        """Append `row` (with its `epoch`, counted from 1) to the history; on the main process, checkpoint `state`
        with the history, config, code digest and MLflow run id, rewrite history.csv and log the row's numbers."""
        self.history.append(row)
        if not self.is_main:
            return
        save_checkpoint(
            {
                **state,
                "epoch": row["epoch"],
                "history": self.history,
                "config": self.config,
                "code_digest": self.digest,
                "mlflow_run_id": self.run_id,
            },
            self.checkpoint_path,
        )
        write_history(self.out / "history.csv", self.history)
        self.tracker.log_metrics(numeric(row), step=row["epoch"])

    def write_history(self) -> None:
        """history.csv again (a resume of a finished run whose outputs were removed, e.g. by DVC, writes them all)."""
        if self.is_main:
            write_history(self.out / "history.csv", self.history)

    def finish(self, metrics: Mapping[str, Any], artifacts: Sequence[str]) -> None:
        """Write `metrics.json` and log the final numbers at the last epoch's step (a key's value that the epoch
        logged already is not logged again) and the named files of the run folder as artifacts."""
        if not self.is_main:
            return
        atomic_write_json(self.out / "metrics.json", dict(metrics))
        self.tracker.log_metrics(numeric(metrics), step=self.history[-1]["epoch"])
        for name in artifacts:
            self.tracker.log_artifact(self.out / name)
