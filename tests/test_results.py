"""The committed tables against the pipeline that made them: `dvc repro` (the quick profile, results/quick/) and
`make repro-small` (the small profile, results/). Every CIFAR-10 row the pipeline trains is in its table with all its
seeds, and every row learns: each seed's top-1 on the 10,000 test images is at least twice chance."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHANCE = 100.0 / 10  # CIFAR-10, top-1 in %
FLOOR = 2 * CHANCE


def _pipeline_rows(profile: str) -> tuple[set[str], list[int]]:
    """The run folders of the CIFAR-10 table that the pipeline's lists make at `profile`, and the seeds of each."""
    pipe = yaml.safe_load((REPO / "pipelines" / "params.yaml").read_text())["pipeline"]
    seeds = pipe[profile]["seeds"] if profile in pipe and "seeds" in pipe[profile] else pipe["seeds"]
    chains = [*pipe["cifar_distilled"], *pipe["cifar_decoupled"], *pipe["cifar_pretrained"]]  # both recipes each
    rows = set(pipe["cifar_methods"]) | set(chains) | {f"{m}@paper" for m in [*chains, *pipe["cifar_paper_methods"]]}
    return rows, seeds


def _sized_rows(profile: str) -> dict[str, list[int]]:
    """The searched cell at BNAS-B's and BNAS-C's sizes (pipeline.searched_sizes): folder -> its train seeds."""
    pipe = yaml.safe_load((REPO / "pipelines" / "params.yaml").read_text())["pipeline"]
    entries = pipe[profile].get("searched_sizes", pipe["searched_sizes"]) if profile in pipe else pipe["searched_sizes"]
    out: dict[str, list[int]] = {}
    for e in entries:
        out.setdefault(e["retrain"], []).append(e["train_seed"])
    return out


def _table(path: Path) -> dict[str, dict[str, str]]:
    lines = path.read_text().splitlines()
    return {r["run_folder"]: r for r in csv.DictReader(lines[1:]) if r["run_folder"]}


def _check(folder: str, rows: set[str], seeds: list[int]) -> None:
    table = _table(REPO / folder / "cifar10.csv")
    missing = sorted(rows - set(table))
    assert not missing, f"{folder}/cifar10.csv lacks rows the pipeline trains: {missing} (re-run the pipeline)"
    for name in sorted(rows):
        r = table[name]
        assert sorted(int(s) for s in r["seeds"].split()) == sorted(seeds), (name, r["seeds"])
        values = [float(v) for v in r["top1_values"].split()]
        assert min(values) >= FLOOR, f"{name}: a seed at {min(values):.2f}% top-1, under {FLOOR:.0f}% (chance: 10%)"


@pytest.mark.parametrize("profile, folder", [("quick", "results/quick")])
def test_every_shared_recipe_row_is_in_the_committed_table_and_learns(profile, folder):
    rows, seeds = _pipeline_rows(profile)
    _check(folder, {r for r in rows if not r.endswith("@paper")}, seeds)


@pytest.mark.parametrize("profile, folder", [("quick", "results/quick")])
def test_every_own_recipe_row_is_in_the_committed_table_and_learns(profile, folder):
    rows, seeds = _pipeline_rows(profile)
    _check(folder, {r for r in rows if r.endswith("@paper")}, seeds)


@pytest.mark.parametrize("profile, folder", [("quick", "results/quick")])
def test_every_searched_cell_at_bnas_b_and_c_size_is_in_the_committed_table_and_learns(profile, folder):
    for name, seeds in _sized_rows(profile).items():
        _check(folder, {name}, seeds)
