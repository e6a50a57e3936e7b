"""The data of `dvc plots show` (harness/dvc_plots.py), read from the committed quick-profile runs under runs/, and the
top-level plot definitions of both pipelines; the offline page template."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest
import yaml

from harness.dvc_plots import PLOT_FILES, write_offline_template, write_plot_data
from harness.tables import build_report

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "runs"


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tables, rows = build_report(RUNS, ROOT / "results" / "reference.yaml", "quick")
    out = tmp_path_factory.mktemp("plots")
    write_plot_data(rows, out)
    return {t.name: t for t in tables}, out


def test_curves_hold_every_epoch_of_every_finished_training_run(report):
    _, out = report
    curves = _read(out / "curves.csv")
    runs = sorted(p.parent for p in (RUNS / "cifar10").glob("*/seed*/metrics.json") if "search" not in p.parts[-3])
    assert runs, "the committed quick-profile runs are missing"
    for run in runs:
        with (run / "history.csv").open(newline="") as f:
            history = list(csv.DictReader(f))
        mine = [r for r in curves if r["name"] == run.parent.name and r["seed"] == run.name.removeprefix("seed")]
        assert [int(r["epoch"]) for r in mine] == [int(h["epoch"]) for h in history]
        for r, h in zip(mine, history, strict=True):
            assert float(r["train_loss"]) == pytest.approx(float(h["train/loss"]))
            # validation only where the epoch measured it: blank, not 0 or NaN
            assert (r["val_top1"] == "") == (h["val/top1"] == "")


def test_search_curves_hold_supernet_accuracy_and_entropy(report):
    _, out = report
    rows = _read(out / "search_curves.csv")
    searches = sorted(p.parent for p in (RUNS / "cifar10").glob("search*/seed*/metrics.json"))
    assert searches
    assert {(r["name"], r["seed"]) for r in rows} == {(s.parent.name, s.name.removeprefix("seed")) for s in searches}
    # at most ln(K): K = 7 ops in S_B, 8 in the DARTS and BATS spaces
    assert all(
        0.0 < float(r["alpha_entropy"]) <= math.log(8) and 0 <= float(r["supernet_val_top1"]) <= 100 for r in rows
    )


def test_seed_files_match_the_tables(report):
    tables, out = report
    cifar = _read(out / "cifar10_seeds.csv")
    for raw in tables["cifar10"].raw:
        n = raw.get("n") or 0
        assert sum(r["name"] == raw["run_folder"] for r in cifar) == n
    claims = _read(out / "claims_seeds.csv")
    want = sum((c["a_n"] or 0) + (c["b_n"] or 0) for c in tables["claims"].raw)
    assert len(claims) == want > 0
    assert {r["side"] for r in claims} <= {"a", "b"}


def test_files_have_their_columns_even_when_empty(tmp_path):
    paths = write_plot_data({}, tmp_path)
    assert [p.name for p in paths] == list(PLOT_FILES)
    for p in paths:
        assert p.read_text().strip().split(",") == PLOT_FILES[p.name]
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.parametrize("dvc_yaml", ["dvc.yaml", "pipelines/small/dvc.yaml"])
def test_top_level_plots_point_at_plot_files_and_columns_and_no_stage_plots_remain(dvc_yaml):
    spec = yaml.safe_load((ROOT / dvc_yaml).read_text())
    templates = {p.stem for p in (ROOT / ".dvc" / "plots").glob("*.json")}
    assert len(spec["plots"]) >= 8
    for entry in spec["plots"]:
        ((title, d),) = entry.items()
        assert d["template"] in templates, title
        ((path, column),) = d["y"].items()
        name = Path(path).name
        assert name in PLOT_FILES and column in PLOT_FILES[name] and d["x"] in PLOT_FILES[name], title
    # the per-run history.csv files are plain outputs: stage plots would draw one chart per run with DVC's guess of y
    for stage in spec["stages"].values():
        body = stage.get("do", stage)
        assert "plots" not in body


def test_offline_template_inlines_vega_and_keeps_dvcs_placeholders(tmp_path):
    page = write_offline_template(tmp_path / "page.html").read_text()
    assert "{plot_divs}" in page and "{refresh_tag}" in page
    assert "window.vegaEmbed" in page
    assert not re.search(r"<script[^>]+src=", page), "no script may load from the network"
