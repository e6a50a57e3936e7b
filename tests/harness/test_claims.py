"""The claims table, the searches table and `bnas tables --against`, on fixture run folders; the statistics are
recomputed independently with scipy."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from scipy import stats

from harness.against import against_table, read_tables
from harness.cli import cli
from harness.errors import DataError
from harness.search_results import binary_conv_share, collect_searches, early_epochs
from harness.stats import claim_verdict, holm

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "results" / "reference.yaml"

TOP1 = {
    "bnas_a": [60.0, 61.0, 62.0],
    "bireal_resnet18_cifar": [55.0, 55.5, 56.0],
    "xnornetpp_resnet18_cifar": [61.0, 60.0, 62.0],
    "binarynet_resnet18_cifar": [70.0, 71.0, 69.5],  # a baseline better than BNAS-A: claim 4c contradicted
    "bnas_searched": [58.0, 58.5, 59.0],
    "ablation_no_skip": [40.0, 41.0, 42.0],
    "ablation_no_zeroise": [58.2, 58.8, 57.9],
    "ablation_no_div": [58.1, 59.2],
    "bats_searched": [57.0, 56.0, 58.5],  # BATS's space searched at BNAS's budget: claim 7
}
CONV = ["bin_conv_3x3", 0]
POOL = ["max_pool_3x3", 1]


def _genotype(n_conv: int) -> dict:
    ops = [CONV] * n_conv + [POOL] * (8 - n_conv)
    return {"normal": ops, "normal_concat": [2, 3, 4, 5], "reduce": [POOL] * 8, "reduce_concat": [2, 3, 4, 5]}


def _write_runs(root: Path, top1: dict[str, list[float]] = TOP1) -> None:
    for method, values in top1.items():
        model = "bnas_a" if method.startswith(("bnas", "ablation")) else method
        for seed, v in enumerate(values):
            d = root / "cifar10" / method / f"seed{seed}"
            d.mkdir(parents=True)
            ops = 5e6 if model == "bnas_a" else 1.4e6
            (d / "metrics.json").write_text(json.dumps({"val/top1": v, "val/top5": 90.0, "cost/ops": ops}))
            (d / "config.yaml").write_text(yaml.safe_dump({"train": {"model": model, "seed": seed}}))
    # searches: lambda = 1 keeps 6 of 16 ops binary convs in epochs 1-2, lambda = 0 only 2; 4 epochs, tau = 1.54
    for variant, lam, convs in (("search", 1.0, [6, 7, 5]), ("search_no_div", 0.0, [2, 3, 2])):
        for seed, c in zip((2, 3, 4), convs, strict=True):
            d = root / "cifar10" / variant / f"seed{seed}"
            (d / "genotypes").mkdir(parents=True)
            (d / "metrics.json").write_text(
                json.dumps({"search/alpha_entropy": 1.5 + 0.01 * seed, "search/val_top1": 40.0 + seed})
            )
            (d / "config.yaml").write_text(
                yaml.safe_dump({"search": {"seed": seed, "epochs": 4, "lam": lam, "tau": 1.54}})
            )
            sha = "same" if seed == 2 else f"{variant}{seed}"  # seed 2: both searches derived the same cell
            (d / "genotype.json").write_text(json.dumps({"genotype": {"sha256": sha}}))
            row = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.7]  # std over the 7 ops: 0.7 / sqrt(7) (ddof 1)
            (d / "alphas_final.json").write_text(json.dumps({"alphas_normal": [row] * 14, "alphas_reduce": [row] * 14}))
            for e in range(1, 5):
                g = _genotype(c if e <= 2 else 0)  # epochs 3-4 (after the early epochs) must not count
                (d / "genotypes" / f"epoch{e:03d}.json").write_text(
                    json.dumps({"epoch": e, "genotype": g, "primitives": ["p"] * 7})
                )


def _tables(runs: Path, out: Path, *extra: str) -> str:
    """`bnas tables` on fixture runs at profile small; returns its output."""
    res = CliRunner().invoke(
        cli,
        ["tables", "--runs", str(runs), "--reference", str(REFERENCE), "--out", str(out), "--profile", "small", *extra],
    )
    assert res.exit_code == 0, res.output
    return res.output


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(ln for ln in path.read_text().splitlines() if not ln.startswith("#")))


def test_claim_verdict_rule():
    assert claim_verdict(2.0, 0.01) == "direction reproduced"
    assert claim_verdict(-2.0, 0.01) == "contradicted"
    assert claim_verdict(2.0, 0.2) == "inconclusive"
    assert claim_verdict(2.0, math.nan) == "inconclusive"
    assert claim_verdict(math.nan, math.nan) == "not run"
    assert claim_verdict(-2.0, 0.01, expected_sign=-1) == "direction reproduced"


def test_binary_conv_share_and_early_epochs(tmp_path):
    assert binary_conv_share(_genotype(4)) == pytest.approx(4 / 16)
    _write_runs(tmp_path)
    runs = collect_searches(tmp_path)
    assert sorted(runs) == ["search", "search_no_div"]
    r = runs["search"][0]
    # tau = 1.54: the diversity weight exp(-t / tau) >= 1/2 for t <= 1.07, i.e. epochs 1 and 2
    assert early_epochs(r) == [1, 2]
    assert r.max_entropy == pytest.approx(math.log(7))
    r.tau = 7.7  # the paper's tau: epochs 1-6 (here all 4)
    assert early_epochs(r) == [1, 2, 3, 4]


def test_claims_table_matches_scipy_and_holm(tmp_path):
    _write_runs(tmp_path / "runs")
    _tables(tmp_path / "runs", tmp_path / "o")
    rows = {r["claim"]: r for r in _csv(tmp_path / "o" / "claims.csv")}
    assert list(rows) == ["1", "2", "3", "4a", "4b", "4c", "5", "6", "7"]
    pairs = {
        "1": ("bnas_searched", "ablation_no_skip"),
        "2": ("bnas_searched", "ablation_no_zeroise"),
        "3": ("bnas_searched", "ablation_no_div"),
        "4a": ("bnas_a", "bireal_resnet18_cifar"),
        "4b": ("bnas_a", "xnornetpp_resnet18_cifar"),
        "4c": ("bnas_a", "binarynet_resnet18_cifar"),
        "7": ("bats_searched", "bnas_searched"),
    }
    shares_a = [100 * 6 / 16, 100 * 7 / 16, 100 * 5 / 16]
    shares_b = [100 * 2 / 16, 100 * 3 / 16, 100 * 2 / 16]
    raw_p = [stats.ttest_ind(TOP1[a], TOP1[b], equal_var=False).pvalue for a, b in pairs.values()]
    raw_p.append(stats.ttest_ind(shares_a, shares_b, equal_var=False).pvalue)
    adjusted = holm(raw_p)
    for (cid, (a, b)), p, pa in zip(pairs.items(), raw_p, adjusted, strict=False):
        assert float(rows[cid]["p_welch"]) == pytest.approx(p)
        assert float(rows[cid]["p_holm"]) == pytest.approx(pa)
        assert float(rows[cid]["delta"]) == pytest.approx(sum(TOP1[a]) / len(TOP1[a]) - sum(TOP1[b]) / len(TOP1[b]))
        assert int(rows[cid]["a_n"]) == len(TOP1[a]) and int(rows[cid]["b_n"]) == len(TOP1[b])
        lo, hi = stats.t.interval(0.95, len(TOP1[a]) - 1, loc=sum(TOP1[a]) / 3, scale=stats.sem(TOP1[a]))
        if len(TOP1[a]) == 3:
            assert float(rows[cid]["a_ci_lo"]) == pytest.approx(lo) and float(rows[cid]["a_ci_hi"]) == pytest.approx(hi)
    assert float(rows["5"]["a_mean"]) == pytest.approx(sum(shares_a) / 3)
    assert float(rows["5"]["b_mean"]) == pytest.approx(sum(shares_b) / 3)
    assert float(rows["5"]["p_holm"]) == pytest.approx(adjusted[-1])
    assert rows["1"]["verdict"] == "direction reproduced"
    assert rows["4c"]["verdict"] == "contradicted"
    assert rows["3"]["verdict"] == "inconclusive"
    assert rows["6"]["verdict"] == "not run"  # no DARTS-space runs
    assert "MORE OPs" in rows["4a"]["note"]  # BNAS-A has 3.6x the OPs here: the OPs condition is reported
    md = (tmp_path / "o" / "claims.md").read_text()
    assert "Profile `small`" in md and "NOT comparable to the paper" in md
    assert not (tmp_path / "o" / "claims.tex").exists()


def test_searches_table_and_ablation_search_rows(tmp_path):
    _write_runs(tmp_path / "runs")
    _tables(tmp_path / "runs", tmp_path / "o")
    rows = _csv(tmp_path / "o" / "searches.csv")
    assert [(r["search"], r["seed"]) for r in rows] == [
        ("search", "2"), ("search", "3"), ("search", "4"),
        ("search_no_div", "2"), ("search_no_div", "3"), ("search_no_div", "4"),
    ]  # fmt: skip
    nodiv = [r for r in rows if r["search"] == "search_no_div"]
    assert [r["same_cell_as_full"] for r in nodiv] == ["yes", "no", "no"]
    assert float(rows[0]["entropy_pct_uniform"]) == pytest.approx(100 * 1.52 / math.log(7))
    assert float(rows[0]["alpha_spread"]) == pytest.approx(0.7 / math.sqrt(7))
    abl = {r["model"]: r for r in _csv(tmp_path / "o" / "ablation.csv")}
    assert float(abl["ours:bnas_searched"]["search_entropy_mean"]) == pytest.approx((1.52 + 1.53 + 1.54) / 3)
    assert float(abl["ours:ablation_no_div"]["search_val_top1_mean"]) == pytest.approx(43.0)
    assert "search: final alpha entropy (nats)" in (tmp_path / "o" / "ablation.md").read_text()


def test_against_finds_a_shifted_row_and_a_changed_claim(tmp_path):
    _write_runs(tmp_path / "a" / "runs")
    shifted = dict(TOP1, bireal_resnet18_cifar=[65.0, 65.5, 66.0])  # now above BNAS-A: claim 4a flips
    _write_runs(tmp_path / "b" / "runs", shifted)
    _tables(tmp_path / "a" / "runs", tmp_path / "ta")
    out = _tables(tmp_path / "b" / "runs", tmp_path / "tb", "--against", str(tmp_path / "ta"))
    assert "claim 4a: direction reproduced -> contradicted" in out
    rows = {r["row"]: r for r in _csv(tmp_path / "tb" / "against.csv")}
    assert rows["cifar10/bireal_resnet18_cifar top-1"]["verdict"] == "higher"
    assert rows["cifar10/bnas_a top-1"]["verdict"] == "identical"
    p = stats.ttest_ind(shifted["bireal_resnet18_cifar"], TOP1["bireal_resnet18_cifar"], equal_var=False).pvalue
    assert float(rows["cifar10/bireal_resnet18_cifar top-1"]["p_welch"]) == pytest.approx(p)
    # each run folder is one row, even where it is in several tables (bnas_searched: CIFAR-10 and ablation)
    assert sum(k.startswith("cifar10/bnas_searched") for k in rows) == 1
    assert any(k.startswith("claim 5 A") for k in rows)


def test_against_reads_committed_tables_from_git(tmp_path):
    repo = tmp_path / "repo"
    _write_runs(repo / "runs")
    _tables(repo / "runs", repo / "results")
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "results"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "tables"], check=True)
    import os

    cwd = os.getcwd()
    try:
        os.chdir(repo)
        committed = read_tables("git:HEAD")
        t = against_table(read_tables(repo / "results"), committed, "git:HEAD")
        assert {r["verdict"] for r in t.raw} == {"identical"}
        moved = read_tables("git:HEAD:results")  # an explicit folder
        assert moved == committed and read_tables("git:HEAD:nowhere")["cifar10.csv"] == []
        with pytest.raises(DataError, match="not a git revision"):
            read_tables("git:no-such-rev")
    finally:
        os.chdir(cwd)
    with pytest.raises(DataError, match="no such folder"):
        read_tables(tmp_path / "missing")


def test_detectable_difference_is_where_welch_crosses_p_005():
    from harness.stats import welch_detectable

    a, b = [40.1, 37.5, 41.0], [38.9, 40.7, 36.0, 39.2]
    d = welch_detectable(a, b)
    assert 0 < d < 10
    for k, side in ((1.01, "below"), (0.99, "above")):
        shifted = [x + d * k for x in a]  # same spreads, mean difference d * k (plus the original one)
        base = sum(a) / len(a) - sum(b) / len(b)
        shifted = [x - base for x in shifted]  # mean difference exactly d * k
        p = stats.ttest_ind(shifted, b, equal_var=False).pvalue
        assert (p < 0.05) == (side == "below"), (k, p)
    assert math.isnan(welch_detectable([1.0], b))
