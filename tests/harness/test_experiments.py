"""`bnas exp` (harness/experiments.py): DVC experiment records pivoted to one row per run."""

from __future__ import annotations

import math

from harness.experiments import exp_rows, format_exp_rows

# records shaped as dvc.api.exp_show() returns them: flat "path:metric" keys and params by name
RECORDS = [
    {
        "Experiment": None,
        "rev": "workspace",
        "profile": "quick",
        "runs/cifar10/bnas_a/seed0/metrics.json:val/top1": 33.1,
        "runs/cifar10/bnas_a/seed0/metrics.json:cost/ops": 4979968.0,
        "runs/cifar10/bnas_a/seed1/metrics.json:val/top1": 34.6,
        "runs/cifar10/search_no_skip/seed2/metrics.json:search/val_top1": 30.5,
        "runs/cifar10/search_no_skip/seed2/metrics.json:search/alpha_entropy": 1.9,
        "runs/small/cifar10/a_very_long_method_folder_name_for_a_baseline/seed2/metrics.json:val/top1": 41.0,
        "runs/cifar10/bireal_resnet18_cifar/seed0/metrics.json:train/loss": 1.7,  # no top-1: not a row
        "dvc.lock": "ignored",
    },
    {
        "Experiment": "exp-1a2b3",
        "rev": "abc1234",
        "profile": "paper",
        "runs/imagenet/bnas_d/seed0/metrics.json:val/top1": 57.7,
    },
]


def test_rows_one_per_run_with_profile_kind_and_ops():
    rows = exp_rows(RECORDS)
    got = {(r.experiment, r.profile, r.dataset, r.kind, r.folder, r.seed): (r.top1, r.ops_1e8) for r in rows}
    assert set(got) == {
        ("workspace", "quick", "cifar10", "train", "bnas_a", 0),
        ("workspace", "quick", "cifar10", "train", "bnas_a", 1),
        ("workspace", "quick", "cifar10", "search", "search_no_skip", 2),
        ("workspace", "small", "cifar10", "train", "a_very_long_method_folder_name_for_a_baseline", 2),
        ("exp-1a2b3", "paper", "imagenet", "train", "bnas_d", 0),
    }
    top1, ops = got[("workspace", "quick", "cifar10", "train", "bnas_a", 0)]
    assert top1 == 33.1 and ops == 4979968.0 / 1e8
    assert math.isnan(got[("workspace", "quick", "cifar10", "train", "bnas_a", 1)][1])


def test_table_fits_120_columns_and_cuts_long_names():
    text = format_exp_rows(exp_rows(RECORDS))
    lines = text.splitlines()
    assert len(lines) == 2 + 5
    assert max(len(line) for line in lines) <= 120
    assert "a_very_long_method_folder_na…" in text or "…" in text
    assert "33.10" in text and "0.0498" in text
