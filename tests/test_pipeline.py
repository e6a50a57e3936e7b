"""dvc.yaml, the Makefile, CI and README agree with each other and with the code."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from harness.cli import cli
from harness.config import Config, config_to_dict, flatten

REPO = Path(__file__).resolve().parents[1]


def _stages() -> dict:
    """Stage definitions, with foreach/matrix templates reduced to their `do` body."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: st.get("do", st) for name, st in stages.items()}


def test_every_stage_is_one_real_bnas_command():
    for name, stage in _stages().items():
        argv = shlex.split(stage["cmd"])
        assert argv[0] == "bnas", name
        assert argv[1] in cli.commands, f"{name}: unknown command {argv[1]}"
        assert "&&" not in argv and ";" not in stage["cmd"], name


def test_every_declared_param_exists_in_the_schema():
    keys = set(flatten(config_to_dict(Config())))
    groups = {k.split(".")[0] for k in keys}
    in_file = yaml.safe_load((REPO / "pipelines" / "params.yaml").read_text())
    file_keys = set(flatten(in_file)) | set(in_file)
    for name, stage in _stages().items():
        for entry in stage.get("params", []):
            assert isinstance(entry, dict) and list(entry) == ["pipelines/params.yaml"], name
            for key in entry["pipelines/params.yaml"]:
                if key.startswith("recipes.${"):  # a templated recipe: every foreach item's recipe must exist
                    continue
                assert key in keys or key in groups, f"{name}: {key} is not a config key"
                assert key in file_keys, f"{name}: {key} is not in pipelines/params.yaml (DVC needs it there)"


def test_train_stage_outputs_metrics_and_plots_uncached():
    for name, stage in _stages().items():
        if not name.startswith("train"):
            continue
        metrics = stage["metrics"][0]
        ((path, opts),) = metrics.items()
        assert path.endswith("metrics.json") and opts["cache"] is False
        ((path, opts),) = stage["plots"][0].items()
        assert path.endswith("history.csv") and opts["cache"] is False
        assert "--resume" in stage["cmd"]


def test_every_foreach_recipe_exists():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    recipes = yaml.safe_load((REPO / "pipelines" / "params.yaml").read_text())["recipes"]
    for name, st in stages.items():
        for key, item in (st.get("foreach") or {}).items():
            if "recipe" in item:
                assert item["recipe"] in recipes, f"{name}@{key}: unknown recipe {item['recipe']}"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make repro" in readme and "BNAS_DATA" in readme
    assert (REPO / ".ci" / "run").read_text().strip().splitlines()[-1] == "make test"
    make = (REPO / "Makefile").read_text()
    assert "-c constraints.txt" in make and "dvc repro" in make


def test_constraints_pin_the_tested_torch_pair():
    pins = dict(ln.split("==") for ln in (REPO / "constraints.txt").read_text().splitlines() if "==" in ln)
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1" and pins["mlflow"] == "3.17.2"
    assert pins["dvc"].startswith("3.")
