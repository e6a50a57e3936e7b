"""dvc.yaml, the Makefile, CI and README agree with each other and with the code."""

from __future__ import annotations

import csv
import dataclasses
import functools
import shlex
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from harness.cli import cli
from harness.config import Config, config_to_dict, flatten

REPO = Path(__file__).resolve().parents[1]


@functools.cache
def _stages() -> tuple:
    """The stages exactly as DVC resolves them (foreach and matrix expanded); resolved once for all the tests here
    (none of them changes the repository's dvc.yaml files)."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return tuple(repo.index.stages)


def _params(stage) -> list[str]:
    return [p for d in stage.deps if hasattr(d, "params") for p in (d.params or [])]


def test_every_stage_is_one_real_bnas_command():
    stages = _stages()
    assert len(stages) >= 20
    for st in stages:
        argv = shlex.split(st.cmd)
        assert argv[0] == "bnas", st.addressing
        assert argv[1] in cli.commands, f"{st.addressing}: unknown command {argv[1]}"
        assert "&&" not in argv and ";" not in st.cmd, st.addressing
        # and the command line parses: click accepts every option (nothing runs)
        ctx = cli.commands[argv[1]].make_context(argv[1], argv[2:], resilient_parsing=True)
        assert not ctx.args, f"{st.addressing}: unexpected arguments {ctx.args}"


def test_every_declared_param_exists_in_the_schema_and_in_the_file():
    keys = set(flatten(config_to_dict(Config())))
    groups = {f.name for f in dataclasses.fields(Config)}
    in_file = yaml.safe_load((REPO / "pipelines" / "params.yaml").read_text())
    file_keys = set(flatten(in_file)) | set(in_file)
    for prefix in ("methods", "profiles"):  # entries are groups of keys: their prefixes count as keys too
        for name, entry in in_file[prefix].items():
            file_keys.add(f"{prefix}.{name}")
            file_keys.update(f"{prefix}.{name}.{g}" for g in entry)
    for st in _stages():
        for key in _params(st):
            assert key.split(".")[0] in groups, f"{st.addressing}: {key} is not a config key"
            assert key in keys or key in groups or key in file_keys, f"{st.addressing}: {key} is not a config key"
            assert key in file_keys, f"{st.addressing}: {key} is not in pipelines/params.yaml (DVC needs it there)"


def test_every_method_the_pipeline_names_resolves():
    """Each --method of a stage is a `methods` entry whose config (recipe, groups, every profile) loads; every CIFAR-10
    row trains with the pipeline's one recipe, passed explicitly."""
    from harness.config import load_config

    params_file = REPO / "pipelines" / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    checked = set()
    for st in _stages():
        argv = shlex.split(st.cmd)
        if "--method" not in argv:
            continue
        method = argv[argv.index("--method") + 1]
        assert f"methods.{method}" in _params(st), f"{st.addressing}: does not declare methods.{method}"
        recipe = ""
        if argv[1] == "train" and "data/cifar10" in argv:
            recipe = argv[argv.index("--recipe") + 1]
            # the rows of the shared recipe, and (folder <method>@paper) each method's own paper recipe
            own = "@paper/" in argv[argv.index("--out") + 1]
            assert recipe == ("own" if own else params["pipeline"]["cifar_recipe"]), st.addressing
        if (method, recipe) in checked:
            continue
        checked.add((method, recipe))
        expected = params["methods"][method]["recipe"] if recipe == "own" else recipe
        for profile in ("quick", "small", "paper"):
            cfg = load_config(params_file, {"profile": profile}, recipe=recipe, method=method)
            if recipe:
                assert cfg.train.recipe == expected, f"{st.addressing}: every CIFAR row shares one recipe"


def test_every_method_of_make_repro_imagenet_resolves():
    """The ImageNet lists that `make repro-imagenet` sets (the poster's rows, the chains and their first stages) name
    `methods` entries whose configs load at every profile, 1000 classes each."""
    import re

    from harness.config import load_config

    make = (REPO / "Makefile").read_text().replace("\\\n", " ")
    lists = re.findall(r"pipeline\.imagenet_(methods|decoupled|pretrained)=([^']*)'", make)
    names = {"methods": re.search(r"IMAGENET_METHODS := \[([^\]]*)\]", make).group(1).split(",")}
    for key, value in lists:
        if key != "methods":
            names[key] = value.strip("[]").split(",")
    methods = {n.strip() for v in names.values() for n in v if n.strip()}
    methods |= {f"{m.strip()}_coupled" for m in names["decoupled"]} | {
        f"{m.strip()}_pretrain" for m in names["pretrained"]
    }
    assert {"bonn_resnet18", "bnas_d_noreg", "bnas_d_v2", "pcnn_resnet18_pretrain", "bnas_d_v2_multistage"} <= methods
    for method in sorted(methods):
        for profile in ("quick", "paper"):
            cfg = load_config(REPO / "pipelines" / "params.yaml", {"profile": profile}, method=method)
            assert cfg.train.num_classes == 1000, method


def test_train_stages_output_metrics_and_history_uncached_and_resume():
    """Each run's metrics.json is a DVC metric and its history.csv an uncached output; the plots are the top-level
    ones over the long-format plot data (tests/harness/test_dvc_plots.py), not one stage plot per run."""
    for st in _stages():
        if shlex.split(st.cmd)[1] not in ("train", "search"):
            continue
        assert "--resume" in st.cmd, st.addressing
        metrics = [o for o in st.outs if o.metric]
        history = [o for o in st.outs if str(o.def_path).endswith("history.csv")]
        assert len(metrics) == 1 and str(metrics[0].def_path).endswith("metrics.json") and not metrics[0].use_cache
        assert len(history) == 1 and not history[0].use_cache and not history[0].plot
        assert not [o for o in st.outs if o.plot], st.addressing


def test_quick_profile_tables_say_they_are_not_comparable():
    stages = {st.addressing: st for st in _stages()}
    assert "--profile quick" in stages["tables"].cmd and "--profile quick" in stages["figures"].cmd
    assert yaml.safe_load((REPO / "pipelines" / "params.yaml").read_text())["profile"] == "quick"


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


# A new baseline family, as docs/adding_a_method.md describes it: this one file, a params entry, nothing in harness/.
TOY_FAMILY = '''"""A toy binary family (tests/test_pipeline.py): a one-block-per-stage BinaryNet-style ResNet."""

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from methods.baselines._binary_resnet import BinaryBasicBlock, BinaryResNet, binary_conv_factory, cfg
from methods.registry import MethodInfo, describe_models

default_cfgs = generate_default_cfgs({"toy_binary_cifar.untrained": cfg(cifar=True)})


@register_model
def toy_binary_cifar(pretrained: bool = False, **kwargs: Any) -> BinaryResNet:
    """The toy: 1 binary block per stage, CIFAR stem."""
    conv = binary_conv_factory("ste_sign", "ste_sign")
    args = {"layers": (1, 1, 1, 1), "widths": (8, 16, 32, 64), "cifar_stem": True, "img_size": 32, "num_classes": 10}
    args = {**args, **kwargs}
    return build_model_with_cfg(BinaryResNet, "toy_binary_cifar", False, block=BinaryBasicBlock, conv=conv, **args)


describe_models(("toy_binary_cifar",), MethodInfo("Toy-Net", "Sign (toy)", "tests/test_pipeline.py"))
'''


def _micro_copy(dst: Path, cifar_cache: Path, imagenette: Path, chains: bool = True) -> None:
    """A copy of the repository (tracked files) whose params select a micro profile: 1 search, 1 seed, 2 baselines,
    one of them the toy family added as docs/adding_a_method.md says (its file and its params entry only)."""
    import shutil
    import subprocess

    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for f in files:
        if f.startswith(("runs/", "results/", "pipelines/small/")) or f in ("dvc.lock",) or not (REPO / f).is_file():
            continue
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dst / f)
    params = yaml.safe_load((dst / "pipelines" / "params.yaml").read_text())
    params["profile"] = "micro"
    params["profiles"]["micro"] = {
        "data": {"train_subset": 200, "test_subset": 500},
        "train": {"epochs": 1, "batch_size": 50, "eval_interval": 1},
        "search": {"epochs": 1, "train_subset": 64, "batch_size": 32, "layers": 3, "init_channels": 4},
    }
    params["train"]["threads"] = params["search"]["threads"] = 2  # not a size: the groups, not the profile
    for entry in params["methods"].values():
        if "quick" in entry.get("profiles", {}):
            entry["profiles"]["micro"] = entry["profiles"]["quick"]
    params["pipeline"] = {
        "retrain_cell": "best",
        "cifar_recipe": "shared",
        "seeds": [0],
        "cifar_methods": ["bireal_resnet18_cifar", "toy_binary_cifar"],
        "cifar_teacher": "resnet18_teacher",  # the multi-stage chains, one method each: teacher -> step 1 -> step 2
        "cifar_distilled": ["react_resnet18_cifar"] if chains else [],
        "cifar_decoupled": ["binaryduo_resnet18_cifar"] if chains else [],  # coupled -> decoupled
        "cifar_pretrained": ["pcnn_resnet18_cifar"] if chains else [],  # PCNN: ternary pretrain -> finetune
        "cifar_paper_methods": ["toy_binary_cifar"] if chains else [],  # its own recipe (`--recipe own`): "shared"
        "searches": [{"search": "search", "seed": 2, "retrain": "bnas_searched", "train_seed": 0}],
        # the searched cell at BNAS-B's size (the ablation table's BNAS-B Full cell)
        "searched_sizes": [{"search": "search", "seed": 2, "retrain": "bnas_b_searched", "train_seed": 0}]
        if chains
        else [],
        "imagenet_source": [str(imagenette)],  # the opt-in ImageNet path, on the real Imagenette subset
        "imagenet_methods": ["bnas_d"],
        "imagenet_seeds": [0],
        "imagenet_distilled": [],
        "imagenet_decoupled": [],
        "imagenet_pretrained": [],
        "imagenet_teacher": {"model": "resnet34", "weights": ""},
    }
    params["methods"]["toy_binary_cifar"] = {"recipe": "shared", "train": {"model": "toy_binary_cifar"}}
    (dst / "methods" / "baselines" / "toy.py").write_text(TOY_FAMILY)
    (dst / "pipelines" / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dst / "results").mkdir(exist_ok=True)
    shutil.copy2(REPO / "results" / "reference.yaml", dst / "results" / "reference.yaml")
    shutil.copytree(cifar_cache, dst / "data" / "cifar10", ignore=shutil.ignore_patterns("raw"))


# the multi-stage rows, each with the pipeline's recipe and its own (@paper), and the toy's own-recipe row
MULTI_STAGE_ROWS = {"react_resnet18_cifar", "binaryduo_resnet18_cifar", "pcnn_resnet18_cifar"}
MULTI_STAGE_ROWS |= {f"{m}@paper" for m in MULTI_STAGE_ROWS} | {"toy_binary_cifar@paper"}


# the multi-stage chains add 4 trainings (~90 s on 2 cores): that variant runs with `pytest -m slow`
@pytest.mark.parametrize("chains", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["rows", "chains"])
def test_micro_profile_dvc_repro_end_to_end(cifar_cache, data_root, tmp_path, chains):
    """`dvc repro` in a copy of the repository on real CIFAR-10: tables and figures appear, the MLflow parent run is
    finished, a second repro does nothing, and a changed param makes only its stage stale."""
    import os
    import subprocess

    repo = tmp_path / "repo"
    _micro_copy(repo, cifar_cache, data_root / "imagenette", chains)
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(repo),  # the copy's code (with the toy family), not the installed checkout's
    )

    def run(*args: str) -> str:
        res = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, (args, res.stdout[-3000:], res.stderr[-3000:])
        return res.stdout

    run("git", "init", "-q")
    run("git", "add", "-A")
    run("dvc", "commit", "-f", "prepare")  # the prepared cache is already there: record it instead of re-reading PNGs
    out = run("dvc", "repro")
    assert "Running stage 'search@0'" in out and "Running stage 'figures'" in out
    md = (repo / "results" / "micro" / "cifar10.md").read_text()
    assert "Profile `micro`" in md and "bireal_resnet18_cifar" in md and "BNAS (cell searched by this pipeline)" in md
    rows = list(csv.DictReader((repo / "results" / "micro" / "cifar10.csv").read_text().splitlines()[1:]))
    folders = {r["run_folder"] for r in rows}
    chain_rows = MULTI_STAGE_ROWS if chains else set()
    sized = {"bnas_b_searched"} if chains else set()
    assert folders == {"bireal_resnet18_cifar", "toy_binary_cifar", "bnas_searched", ""} | chain_rows | sized
    methods = yaml.safe_load((repo / "pipelines" / "params.yaml").read_text())["methods"]
    for name in chain_rows - {"toy_binary_cifar@paper"}:  # the final stage of each chain, from its first stage
        saved = yaml.safe_load((repo / "runs" / "cifar10" / name / "seed0" / "config.yaml").read_text())["train"]
        assert saved["init_from"].startswith("runs/cifar10/stages/"), saved["init_from"]
        assert saved["init_from"].split("/")[3].endswith("@paper") == name.endswith("@paper"), saved["init_from"]
        own = methods[name.removesuffix("@paper")]["recipe"]
        assert saved["recipe"] == (own if name.endswith("@paper") else "shared"), (name, saved["recipe"])
    if chains:
        react = yaml.safe_load((repo / "runs/cifar10/react_resnet18_cifar/seed0/config.yaml").read_text())["train"]
        assert react["teacher_weights"] == "runs/cifar10/stages/resnet18_teacher/seed0/model.pt"
        labels = {r["run_folder"]: r["method"] for r in rows}
        assert labels["toy_binary_cifar@paper"] == "Toy-Net (toy_binary_cifar), own recipe shared"
        assert labels["react_resnet18_cifar@paper"].endswith("own recipe react_resnet18_paper_step2")
    (toy,) = [r for r in rows if r["run_folder"] == "toy_binary_cifar"]  # described by its family file alone
    assert toy["method"] == "Toy-Net (toy_binary_cifar)" and toy["scheme"] == "Sign (toy)", toy
    profile = run("bnas", "profile", "toy_binary_cifar")
    assert "toy_binary_cifar" in profile and "binary inputs in their alphabet ({-1, +1}): yes" in profile, profile
    assert [r["verdict"] for r in rows if r["run_folder"] == ""] == ["not run"]  # BNAS-A: in the paper, not run here
    assert all(float(r["top1_mean"]) > 0 for r in rows if r["n"] != "0")
    assert (repo / "results" / "micro" / "ablation.tex").is_file()
    im = {
        r["method"]: r
        for r in csv.DictReader((repo / "results" / "micro" / "imagenet.csv").read_text().splitlines()[1:])
    }
    assert im["BNAS-D (BNAS-D)"]["n"] == "1" and im["BNAS-D (BNAS-D)"]["verdict"] == "below"
    assert im["BATS (BATS)"]["verdict"] == "not run"
    figs = sorted(p.name for p in (repo / "results" / "micro" / "figures").glob("*.png"))
    assert {"accuracy_vs_ops.png", "learning_curves.png", "cells_search_seed2.png", "alphas_search_seed2.png"} <= set(
        figs
    )
    # MLflow: one finished parent run with the stages' runs nested under it
    import mlflow

    client = mlflow.tracking.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("bnas-cifar10")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("bnas.role") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    # search, retrain, bireal, toy, the teacher; with the chains also ReAct steps 1-2, BinaryDuo coupled and
    # decoupled and PCNN pretrain and finetune, each with both recipes, the toy's own-recipe row and BNAS-B's retrain
    assert len(children) == (19 if chains else 5)
    assert "bireal_resnet18_cifar/top1_mean" in parents[0].data.metrics
    iexp = client.get_experiment_by_name("bnas-imagenet")  # the ImageNet runs nest under their experiment's parent
    iruns = client.search_runs([iexp.experiment_id])
    (iparent,) = [r for r in iruns if r.data.tags.get("bnas.role") == "pipeline"]
    assert iparent.info.status == "FINISHED" and "bnas_d/top1_mean" in iparent.data.metrics
    assert [r.data.tags["bnas.method"] for r in iruns if r.data.tags.get("mlflow.parentRunId")] == ["bnas_d"]
    # nothing changed: nothing runs; one param changed: only its stage is stale
    assert "Running stage" not in run("dvc", "repro")
    params = yaml.safe_load((repo / "pipelines" / "params.yaml").read_text())
    params["methods"]["bireal_resnet18_cifar"]["train"]["lr"] = 0.01
    (repo / "pipelines" / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run("dvc", "status")
    stale = {ln.rstrip(":").strip() for ln in status.splitlines() if ln and not ln.startswith((" ", "\t"))}
    assert stale == {"train@bireal_resnet18_cifar-0"}, status


def test_small_profile_has_three_seeds_of_every_row_and_every_search():
    """The small pipeline (issue 15): >= 3 seeds of every CIFAR-10 row and of every search variant, each derived cell
    retrained with its own train seed, all into runs/small/ and the committed results/; `make repro-small` runs it."""
    params = yaml.safe_load((REPO / "pipelines" / "params.yaml").read_text())
    small = params["pipeline"]["small"]
    assert len(set(small["seeds"])) >= 3
    variants = Counter(s["search"] for s in small["searches"])
    assert set(variants) == {
        "search", "search_no_skip", "search_no_zeroise", "search_no_div", "search_darts_space", "search_bats"
    }  # fmt: skip
    assert min(variants.values()) >= 3
    for v in variants:
        entries = [s for s in small["searches"] if s["search"] == v]
        assert len({s["seed"] for s in entries}) == len(entries) and len({s["train_seed"] for s in entries}) == len(
            entries
        )
    stages = [st for st in _stages() if st.path_in_repo.startswith("pipelines/small/")]
    assert {st.addressing.split(":")[-1].split("@")[0] for st in stages} == {
        "search", "derive", "retrain", "retrain_size", "train", "train_paper", "teacher", "distil_step1",
        "distil_step2", "couple", "decouple", "pretrain", "finetune", "tables", "figures",
    }  # fmt: skip
    # BNAS-B's and BNAS-C's Full cells: the searched cell of 3 searches at each size, one train seed each
    sizes = Counter(s["retrain"] for s in small["searched_sizes"])
    assert sizes == {"bnas_b_searched": 3, "bnas_c_searched": 3}
    assert {s["search"] for s in small["searched_sizes"]} == {"search"}
    for st in stages:
        argv = shlex.split(st.cmd)
        if argv[1] in ("train", "search"):
            assert "profile=small" in argv and "--resume" in argv, st.addressing
            assert argv[argv.index("--out") + 1].startswith("runs/small/"), st.addressing
        # no trained weights among the outputs: a fresh clone holds every output these stages declare
        assert not any(str(o).endswith(".pt") for o in st.outs), st.addressing
    assert "dvc repro pipelines/small/dvc.yaml" in (REPO / "Makefile").read_text()


def test_paper_profile_lists_live_in_params_and_reach_dvc_exp_run_whole():
    """`make repro-paper` keeps no copy of the paper's lists: `bnas config --pipeline paper` turns pipeline.paper
    into `dvc exp run -S` arguments, one per line, each a whole YAML value."""
    from click.testing import CliRunner

    from harness.cli import cli

    assert "bnas config --pipeline paper | xargs -d '\\n' $(BIN)/dvc exp run" in (REPO / "Makefile").read_text()
    res = CliRunner().invoke(
        cli, ["config", "--params", str(REPO / "pipelines" / "params.yaml"), "--pipeline", "paper"]
    )
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0::2] == ["-S"] * (len(lines) // 2)
    sets = dict(a.split(":", 1)[1].split("=", 1) for a in lines[1::2])
    assert yaml.safe_load(sets["profile"]) == "paper"
    assert yaml.safe_load(sets["pipeline.cifar_recipe"]) == "bnas_cifar_paper"
    assert yaml.safe_load(sets["pipeline.seeds"]) == [0, 1, 2, 3, 4]
    searches = yaml.safe_load(sets["pipeline.searches"])
    assert Counter(s["search"] for s in searches)["search"] == 5 and all(" " not in a for a in lines)
    assert set(searches[0]) == {"search", "seed", "retrain", "train_seed"}  # no derivation flags: one rule for all
    sizes = yaml.safe_load(sets["pipeline.searched_sizes"])  # the ablation table's BNAS-B / BNAS-C Full column
    assert Counter(s["retrain"] for s in sizes) == {"bnas_b_searched": 5, "bnas_c_searched": 5}
    assert {(s["search"], s["seed"]) for s in sizes} <= {(s["search"], s["seed"]) for s in searches}
