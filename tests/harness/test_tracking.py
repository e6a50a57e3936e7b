"""MLflow tracking against a real sqlite store (no mocks)."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _helpers import CrashAfter, PoisonWeights, tiny_config
from mlflow.tracking import MlflowClient

from harness.errors import NonFiniteLossError
from harness.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, Tracker, git_info, ui_urls
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
    for key in run.data.metrics:  # one value per (metric, step): the final metrics add keys, never a second value
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), key
    assert "perf/mean_train_img_s" in run.data.metrics
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
    assert steps == [1, 2]  # epochs 1 and 2; the final metrics repeat epoch 2's value, which is not logged again


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


def _start(tracker: Tracker, experiment: str = "bnas-cifar10") -> str:
    return tracker.start(experiment=experiment, run_name="t-s0-train", tags={"bnas.seed": 0}, params={"train.lr": 0.1})


def test_experiments_carry_the_machine_learning_kind(mlflow_uri):
    client = MlflowClient(mlflow_uri)
    _start(Tracker())
    assert client.get_experiment_by_name("bnas-cifar10").tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    old = client.create_experiment("bnas-imagenet")  # made before the harness set the tag
    hand = client.create_experiment("bnas-other", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    _start(Tracker(), "bnas-imagenet")
    _start(Tracker(), "bnas-other")
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert client.get_experiment(hand).tags[EXPERIMENT_KIND_TAG] == "genai_development"  # a kind set by hand stays


def test_a_value_already_logged_at_a_step_is_not_logged_again(mlflow_uri):
    tracker = Tracker()
    run_id = _start(tracker)
    tracker.log_metrics({"val/top1": 50.0, "lr": 0.1}, step=2)  # the last epoch's row
    tracker.log_metrics({"val/top1": 50.0, "epochs": 2}, step=2)  # the final metrics repeat val/top1
    tracker.log_metrics({"lr": 0.05}, step=2)  # a different value at the same step is still logged
    tracker.log_metrics({"val/top1": 50.0}, step=3)
    hist = {
        k: [(m.step, m.value) for m in MlflowClient(mlflow_uri).get_metric_history(run_id, k)]
        for k in ("val/top1", "lr", "epochs")
    }
    assert sorted(hist["val/top1"]) == [(2, 50.0), (3, 50.0)]
    assert sorted(hist["lr"]) == [(2, 0.05), (2, 0.1)]
    assert hist["epochs"] == [(2, 2.0)]


def test_ui_urls_open_the_runs_table_of_each_experiment_with_runs(mlflow_uri):
    _start(Tracker())
    MlflowClient(mlflow_uri).create_experiment("bnas-empty")
    exp_id = MlflowClient(mlflow_uri).get_experiment_by_name("bnas-cifar10").experiment_id
    assert ui_urls(mlflow_uri, port=5123) == [
        ("bnas-cifar10", f"http://127.0.0.1:5123/#/experiments/{exp_id}/runs?workflowType=machine_learning")
    ]


def _git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True, capture_output=True
    )


def test_git_dirty_means_code_or_params_differ_from_the_commit(tmp_path):
    files = {
        "harness/foo.py": "x = 1\n",
        "methods/m.py": "y = 1\n",
        "pipelines/params.yaml": "profile: quick\n",
        "pipelines/small/dvc.yaml": "stages: {}\n",
        "pipelines/small/dvc.lock": "schema: '2.0'\n",
        "dvc.yaml": "stages: {}\n",
        "dvc.lock": "schema: '2.0'\n",
        "runs/x/metrics.json": "{}\n",
        "results/cifar10.md": "| a |\n",
        "README.md": "r\n",
        ".gitignore": "*.pt\n__pycache__/\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "init")
    assert git_info(tmp_path)["dirty"] == "false"
    # what `dvc repro` rewrites, new outputs, ignored files, docs: not code, not params
    for name in ("runs/x/metrics.json", "dvc.lock", "pipelines/small/dvc.lock", "results/cifar10.md", "README.md"):
        (tmp_path / name).write_text("changed\n")
    (tmp_path / "runs/y").mkdir()
    (tmp_path / "runs/y/metrics.json").write_text("{}\n")
    (tmp_path / "harness/model.pt").write_bytes(b"ignored")
    (tmp_path / "harness/__pycache__").mkdir()
    (tmp_path / "harness/__pycache__/foo.pyc").write_bytes(b"ignored")
    info = git_info(tmp_path)
    assert info["dirty"] == "false" and len(info["commit"]) == 40
    for name, change in (
        ("harness/foo.py", "x = 2\n"),
        ("harness/new.py", "z = 1\n"),  # untracked, not ignored
        ("methods/m.py", "y = 2\n"),
        ("pipelines/params.yaml", "profile: paper\n"),
        ("pipelines/small/dvc.yaml", "stages: {a: {cmd: x}}\n"),
        ("dvc.yaml", "stages: {a: {cmd: x}}\n"),
    ):
        before = (tmp_path / name).read_text() if (tmp_path / name).exists() else None
        (tmp_path / name).write_text(change)
        assert git_info(tmp_path)["dirty"] == "true", name
        if before is None:
            (tmp_path / name).unlink()
        else:
            (tmp_path / name).write_text(before)
        assert git_info(tmp_path)["dirty"] == "false", name
    (tmp_path / "harness/foo.py").unlink()  # a deleted source file is a change too
    assert git_info(tmp_path)["dirty"] == "true"
    assert git_info(tmp_path / "runs")["commit"] == info["commit"]  # any folder of the repo
    assert git_info(tmp_path.parent / "nowhere") == {"commit": "unknown", "dirty": "unknown"}


def _supervised(tmp_path: Path, script: str, grace_s: float = 10.0) -> tuple[subprocess.Popen[bytes], int]:
    """`supervise(["sh", "-c", script])` in a fresh Python process; returns it and the child's process group once
    the child has written its pid (by then the signal handlers are installed)."""
    pidfile = tmp_path / "child.pid"
    call = f"supervise(['sh', '-c', {script!r}], None, {grace_s})"
    code = f"from harness.tracking import supervise; raise SystemExit({call})"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while not (pidfile.is_file() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline and proc.poll() is None, "the supervised child did not start"
        time.sleep(0.05)
    return proc, int(pidfile.read_text())


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize(
    ("sig", "script", "rc"),
    [
        (signal.SIGTERM, "echo $$ > child.pid; sleep 300 & sleep 300 & wait", 128 + signal.SIGTERM),
        (signal.SIGHUP, "trap '' HUP; echo $$ > child.pid; sleep 300 & wait", 128 + signal.SIGTERM),  # as SIGTERM
        (signal.SIGINT, "echo $$ > child.pid; sleep 300 & wait", 128 + signal.SIGINT),  # Ctrl-C
        (signal.SIGTERM, "trap '' TERM; echo $$ > child.pid; sleep 300 & wait", 128 + signal.SIGKILL),
    ],
    ids=["term", "hup-as-term", "int", "ignored-then-kill"],
)
def test_supervise_forwards_signals_to_the_whole_group(tmp_path, sig, script, rc):
    proc, pgid = _supervised(tmp_path, script, grace_s=1.0)
    try:
        assert os.getpgid(pgid) == pgid != os.getpgid(proc.pid)  # the child leads its own group
        proc.send_signal(sig)  # to the supervisor only
        assert proc.wait(timeout=20) == rc
        assert _group_gone(pgid)  # nothing of it is left, not even a zombie
    finally:
        for g in (pgid, proc.pid):
            if not _group_gone(g):
                os.killpg(g, signal.SIGKILL)


def test_supervise_stops_what_the_child_leaves_behind(tmp_path):
    proc, pgid = _supervised(tmp_path, "echo $$ > child.pid; sleep 300 & sleep 0.5; exit 3")
    try:
        assert proc.wait(timeout=20) == 3  # the child's own exit code
        assert _group_gone(pgid)
    finally:
        for g in (pgid, proc.pid):
            if not _group_gone(g):
                os.killpg(g, signal.SIGKILL)
