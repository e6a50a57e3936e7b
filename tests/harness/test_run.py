"""`harness/run.py`: the run lifecycle that `bnas train` and `bnas search` share."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch
import yaml

from harness.config import config_from_dict, load_config
from harness.distributed import Runtime
from harness.run import RunLifecycle, config_diff, numeric, process_settings, write_history

RT = Runtime(device=torch.device("cpu"))


class _Recorder:
    """A tracker that records what the lifecycle asks of it (the MLflow one is tested in test_tracking.py)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.run_id: str | None = None

    def start(self, **kw: Any) -> str:
        self.calls.append(("start", kw["run_id"]))
        self.run_id = kw["run_id"] or "r1"
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.calls.append(("metrics", (step, sorted(metrics))))

    def log_artifact(self, path: Any, artifact_path: str | None = None) -> None:
        self.calls.append(("artifact", path.name))

    def end(self, status: str = "FINISHED") -> None:
        self.calls.append(("end", status))


def _run(tmp_path, tracker=None, **train) -> RunLifecycle:
    cfg = config_from_dict({"train": {"epochs": 2, **train}})
    return RunLifecycle(cfg, tmp_path / "run", RT, experiment="e", run_name="n", tags={"t": 1}, tracker=tracker)


def test_a_run_checkpoints_every_epoch_and_resumes_its_history_and_mlflow_run(tmp_path):
    rec = _Recorder()
    run = _run(tmp_path, rec)
    assert run.resumable_state(resume=True) is None  # nothing to resume
    run.start()
    with run:
        run.end_epoch({"epoch": 1, "train/loss": 2.0, "genotype": "{}"}, {"model": {}})
    assert yaml.safe_load((run.out / "config.yaml").read_text())["environment"] == process_settings()
    assert (run.out / "history.csv").read_text().splitlines()[0] == "epoch,train/loss,genotype"
    assert rec.calls == [("start", None), ("metrics", (1, ["train/loss"])), ("end", "FINISHED")]
    again = _run(tmp_path, _Recorder())
    state = again.resumable_state(resume=True)
    assert state is not None and state["epoch"] == 1 and again.history == run.history and again.run_id == "r1"
    load_config(run.out / "config.yaml")  # the recorded environment is not config: the file loads as a config


def test_a_checkpoint_of_another_config_is_kept_as_stale_and_never_resumed(tmp_path):
    run = _run(tmp_path)
    run.start()
    run.end_epoch({"epoch": 1}, {"model": {}})
    other = _run(tmp_path, lr=0.123)
    assert other.resumable_state(resume=True) is None
    assert (other.out / "checkpoint.stale.pt").is_file() and not other.checkpoint_path.exists()


@pytest.mark.parametrize(
    ("error", "status"), [(None, "FINISHED"), (RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")]
)
def test_the_mlflow_run_ends_with_the_runs_status(tmp_path, error, status):
    rec = _Recorder()
    run = _run(tmp_path, rec)
    run.start()
    with pytest.raises(error) if error else contextlib.nullcontext():
        with run:
            if error:
                raise error("stop")
    assert rec.calls[-1] == ("end", status)


def test_helpers():
    assert config_diff({"train": {"lr": 0.1}}, {"train": {"lr": 0.2}}) == ["train.lr: 0.1 -> 0.2"]
    assert numeric({"epoch": 3, "a": 1.5, "b": "x", "c": True, "d": 2}) == {"a": 1.5, "d": 2}


def test_history_columns_in_order_of_first_appearance(tmp_path):
    write_history(tmp_path / "h.csv", [{"epoch": 1, "a": 1}, {"epoch": 2, "b": 2}])
    assert (tmp_path / "h.csv").read_text().splitlines() == ["epoch,a,b", "1,1,", "2,,2"]
