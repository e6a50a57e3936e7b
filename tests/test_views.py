"""The views as a person sees them, rendered in headless Chromium (`make test-views`; Debian: `apt-get install
chromium`): the MLflow UI (experiments list, runs table, a run's page with params, metrics and artifacts, the compare
view) on the runs committed under runs/, and the `dvc plots show` page with no network. Screenshots go to
$BNAS_VIEWS_OUT (default: a temporary folder)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from _helpers import wait_until_serving

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.browser

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--window-size=1400,1000",
]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    pytest.fail("headless Chromium not found: `apt-get install chromium` (Debian), then `make test-views`")


@pytest.fixture(scope="module")
def views_out(tmp_path_factory) -> Path:
    out = Path(os.environ.get("BNAS_VIEWS_OUT") or tmp_path_factory.mktemp("views"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _render(url: str, png: Path, offline: bool = False, budget_ms: int = 20000) -> str:
    """Screenshot `url` into `png` and return the DOM after its scripts ran (`offline`: no host resolves)."""
    flags = [*FLAGS, f"--virtual-time-budget={budget_ms}"]
    if offline:
        flags.append("--host-resolver-rules=MAP * ~NOTFOUND")
    cmd = [_chromium(), *flags]
    subprocess.run([*cmd, f"--screenshot={png}", url], check=True, capture_output=True, timeout=120)
    dom = subprocess.run([*cmd, "--dump-dom", url], check=True, capture_output=True, timeout=120, text=True)
    return dom.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dvc_plots_page_renders_every_plot_offline(tmp_path, views_out):
    out = tmp_path / "dvc_plots"
    res = subprocess.run(
        [sys.executable, "-m", "harness.cli", "plots", "--out", str(out)], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    page = (out / "index.html").read_text()
    assert not re.search(r"<script[^>]+src=", page), "the page must not load scripts from the network"
    dom = _render((out / "index.html").as_uri(), views_out / "dvc_plots.png", offline=True)
    # every top-level plot of both pipelines whose data file exists is drawn, with its title and axis titles
    want = []
    for dvc_yaml in (REPO / "dvc.yaml", REPO / "pipelines" / "small" / "dvc.yaml"):
        spec = yaml.safe_load(dvc_yaml.read_text())
        params = yaml.safe_load((REPO / "pipelines" / "params.yaml").read_text())
        for entry in spec["plots"]:
            ((title, d),) = entry.items()
            ((path, column),) = d["y"].items()
            path = path.replace("${profile}", params["profile"])
            title = title.replace("${profile}", params["profile"])
            if (dvc_yaml.parent / path).is_file():
                want.append((title, column))
    assert len(want) >= 8
    drawn = re.findall(r'<svg[^>]*class="marks" width="([1-9][0-9]*)" height="([1-9][0-9]*)"', dom)
    assert len(drawn) == len(want)  # one drawn SVG chart per plot that has data
    for title, column in want:
        assert f">{title}<" in dom.replace("&amp;", "&"), title
        assert f">{column}<" in dom, column


@pytest.fixture(scope="module")
def mlflow_ui(tmp_path_factory):
    """`bnas ui` on a store holding the committed quick-profile runs, logged as one pipeline run would log them."""
    tmp = tmp_path_factory.mktemp("ui")
    env = dict(
        os.environ,
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    log = subprocess.run(
        [
            sys.executable,
            "-c",
            "from harness.tracking import Tracker; from harness.pipeline_run import finish_pipeline_run as f;"
            "Tracker().pipeline_parent('bnas-cifar10', 'quick');"
            f"print(f({str(REPO / 'runs')!r}, {str(REPO / 'results' / 'quick')!r}, [], 'quick'))",
        ],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
    )
    assert log.returncode == 0, log.stderr
    port = _free_port()
    with open(tmp / "ui.log", "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "ui", "--port", str(port), "--workers", "1"],
            cwd=tmp,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert wait_until_serving(proc, f"http://127.0.0.1:{port}/health", tmp / "ui.log", 120) == 200
        yield f"http://127.0.0.1:{port}", env["MLFLOW_TRACKING_URI"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _api(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    return json.loads(urllib.request.urlopen(req, timeout=30).read())


def test_mlflow_ui_shows_experiments_runs_a_run_and_the_compare_view(mlflow_ui, views_out):
    base, _ = mlflow_ui
    exp = json.loads(
        urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=bnas-cifar10").read()
    )["experiment"]
    runs = _api(base, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 200})["runs"]
    by_name = {r["info"]["run_name"]: r["info"]["run_id"] for r in runs}
    assert {"pipeline-quick", "search-seed2", "bnas_a-seed0", "bnas_a-seed1"} <= set(by_name)
    eid = exp["experiment_id"]

    dom = _render(f"{base}/#/experiments?workflowType=machine_learning", views_out / "mlflow_experiments.png")
    assert "bnas-cifar10" in dom

    dom = _render(f"{base}/#/experiments/{eid}/runs?workflowType=machine_learning", views_out / "mlflow_runs.png")
    # the runs table (not the GenAI overview): the pipeline's parent run, its children folded under it
    assert "pipeline-quick" in dom and f"<strong>{len(runs)}</strong> matching runs" in dom

    rid = by_name["bnas_a-seed0"]
    ml = "workflowType=machine_learning"  # the sidebar's "Model training" switch, as the URLs `bnas ui` prints
    dom = _render(f"{base}/#/experiments/{eid}/runs/{rid}?{ml}", views_out / "mlflow_run.png")
    for text in ("bnas_a-seed0", "Parameters", "train.seed", "Metrics", "val/top1"):
        assert text in dom, text
    dom = _render(f"{base}/#/experiments/{eid}/runs/{rid}/artifacts?{ml}", views_out / "mlflow_run_artifacts.png")
    for text in ("config.yaml", "metrics.json", "history.csv"):
        assert text in dom, text

    ids = json.dumps([by_name["bnas_a-seed0"], by_name["bnas_a-seed1"]])
    dom = _render(
        f"{base}/#/compare-runs?runs={urllib.request.quote(ids)}&experiments={urllib.request.quote(json.dumps([eid]))}"
        f"&{ml}",
        views_out / "mlflow_compare.png",
    )
    for text in ("Comparing 2 Runs", "bnas_a-seed0", "bnas_a-seed1", "train.seed", "train/loss"):
        assert text in dom, text
