"""The `bnas` CLI: every command has help; bad input gives one line and a non-zero exit; a real run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import cli

BNAS = str(Path(sys.executable).parent / "bnas")
COMMANDS = ["prepare", "train", "search", "derive", "evaluate", "profile", "ui"]


def test_help_lists_every_command():
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0
    for c in COMMANDS:
        assert c in res.output
    for c in COMMANDS:
        sub = CliRunner().invoke(cli, [c, "--help"])
        assert sub.exit_code == 0 and "Usage:" in sub.output and len(sub.output.splitlines()) > 3


def _bad(args: list[str], cwd: Path) -> str:
    """Run the real console script; assert one error line on stderr, no traceback, non-zero exit."""
    res = subprocess.run(
        [BNAS, *args], cwd=cwd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1")
    )
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1, res.stderr
    return errors[0]


def test_bad_inputs_give_one_clear_line(cifar_cache, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: many\n")
    line = _bad(["train", "--params", str(bad), "--data", str(cifar_cache), "--out", str(tmp_path / "r")], tmp_path)
    assert "bad.yaml" in line and "train.epochs" in line
    good = tmp_path / "good.yaml"
    good.write_text("train: {model: resnet_18, epochs: 1}\ntracking: {enabled: false}\n")
    line = _bad(
        [
            "train",
            "--data",
            str(cifar_cache),
            "--out",
            str(tmp_path / "r"),
            "--params",
            str(good),
            "-S",
            "train.epochs=1",
            "-S",
            "train.modle=x",
        ],
        tmp_path,
    )
    assert "train.modle" in line
    line = _bad(["train", "--params", str(good), "--data", str(cifar_cache), "--out", str(tmp_path / "r")], tmp_path)
    assert "unknown model 'resnet_18'" in line
    line = _bad(
        ["train", "--params", str(good), "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "r")], tmp_path
    )
    assert "nodata" in line and "bnas prepare" in line
    line = _bad(["prepare", "cifar10", "--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")], tmp_path)
    assert "nowhere" in line
    line = _bad(["evaluate", "--run", str(tmp_path), "--data", str(cifar_cache)], tmp_path)
    assert "config.yaml" in line


def test_train_and_evaluate_end_to_end(cifar_cache, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "data: {train_subset: 512, test_subset: 500}\n"
        "train: {model: test_resnet, epochs: 1, batch_size: 64, device: cpu}\n"
        "tracking: {enabled: false}\n"
    )
    run = tmp_path / "runs" / "cifar10" / "test_resnet" / "seed1"
    res = CliRunner().invoke(
        cli, ["train", "--params", str(params), "--data", str(cifar_cache), "--out", str(run), "--seed", "1"]
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert "seed: 1" in (run / "config.yaml").read_text()
    res = CliRunner().invoke(
        cli, ["evaluate", "--run", str(run), "--data", str(cifar_cache), "--out", str(tmp_path / "eval.json")]
    )
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["val/top1"] == pytest.approx(metrics["val/top1"]) and ev["val/n"] == 500


def test_prepare_imagenet_from_env(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("BNAS_DATA", str(data_root))
    res = CliRunner().invoke(cli, ["prepare", "imagenet", "--out", str(tmp_path / "inet")])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "inet" / "meta.json").read_text())
    assert meta["num_train"] == 1000 and meta["root"].endswith("imagenette")


def test_imagenet_path_trains_end_to_end(data_root, tmp_path):
    """The ImageNet code path (224x224 inputs, folder loader, BNAS transforms) on real Imagenette images."""
    runner = CliRunner()
    res = runner.invoke(
        cli, ["prepare", "imagenet", "--source", str(data_root / "imagenette"), "--out", str(tmp_path / "inet")]
    )
    assert res.exit_code == 0, res.output
    params = tmp_path / "params.yaml"
    params.write_text(
        "data: {train_subset: 40, test_subset: 20, num_workers: 0}\n"
        "train: {model: test_resnet, epochs: 1, batch_size: 10, device: cpu, sched: cosine_restarts,\n"
        "        label_smoothing: 0.1, clip_grad: 5.0, restart_epochs: 1}\n"
        "tracking: {enabled: false}\n"
    )
    run = tmp_path / "run"
    res = runner.invoke(cli, ["train", "--params", str(params), "--data", str(tmp_path / "inet"), "--out", str(run)])
    assert res.exit_code == 0, res.output
    m = json.loads((run / "metrics.json").read_text())
    assert m["val/n"] == 20 and m["params"] > 0


def test_ui_serves_on_loopback(tmp_path):
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = subprocess.Popen(
        [BNAS, "ui", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline, status = time.time() + 90, None
        while time.time() < deadline and status is None:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status
            except OSError:
                time.sleep(0.5)
        assert status == 200
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_two_stage_recipe_binary_activations_then_binary_weights(cifar_cache, tmp_path):
    """XNOR-Net++'s two-stage recipe: stage 1 real weights (no BOPs), stage 2 initialised from stage 1."""
    params = tmp_path / "params.yaml"
    params.write_text(
        "data: {train_subset: 128, test_subset: 100}\n"
        "train: {model: xnornetpp_resnet18_cifar, epochs: 1, batch_size: 64, device: cpu}\n"
        "tracking: {enabled: false}\n"
        "recipes:\n"
        "  s1: {opt: adam, lr: 0.001, model_kwargs: {weight_binary: false}}\n"
        "  s2: {opt: adam, lr: 0.001, model_kwargs: {weight_binary: true}}\n"
    )
    runner = CliRunner()
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    base = ["train", "--params", str(params), "--data", str(cifar_cache)]
    res = runner.invoke(cli, [*base, "--out", str(s1), "--recipe", "s1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, [*base, "--out", str(s2), "--recipe", "s2", "--init-from", str(s1 / "model.pt")])
    assert res.exit_code == 0, res.output
    m1 = json.loads((s1 / "metrics.json").read_text())
    m2 = json.loads((s2 / "metrics.json").read_text())
    assert m1["cost/bops"] == 0 and m2["cost/bops"] > 0
    cfg2 = (s2 / "config.yaml").read_text()
    assert "recipe: s2" in cfg2 and "s1/model.pt" in cfg2
    res = runner.invoke(cli, [*base, "--out", str(tmp_path / "x"), "--init-from", str(tmp_path / "none.pt")])
    assert res.exit_code != 0 and "none.pt" in res.output


def test_derive_re_derives_a_genotype_from_saved_alphas(tmp_path):
    import torch

    from methods.bnas.genotypes import PRIMITIVES, genotype_from_json
    from methods.bnas.search import derive_genotype

    torch.manual_seed(0)
    an, ar = torch.randn(14, 7), torch.randn(14, 7)
    an[:, 0] += 1.5  # Zeroise leads on most normal edges, so gamma matters
    alphas = tmp_path / "alphas.json"
    alphas.write_text(json.dumps({"alphas_normal": an.tolist(), "alphas_reduce": ar.tolist()}))
    out = {}
    for name, extra in {"plain": [], "gamma": ["--gamma", "3"], "row": ["--gamma", "3", "--gamma-compat-row"]}.items():
        res = CliRunner().invoke(
            cli, ["derive", "--alphas", str(alphas), "--out", str(tmp_path / f"{name}.json"), *extra]
        )
        assert res.exit_code == 0, res.output
        out[name] = genotype_from_json(tmp_path / f"{name}.json")
    assert out["plain"] == derive_genotype(an, ar, PRIMITIVES)
    assert out["gamma"] == derive_genotype(an, ar, PRIMITIVES, gamma=3.0)
    assert out["row"] == derive_genotype(an, ar, PRIMITIVES, gamma=3.0, official_gamma_bug=True)
    zeroise = [sum(op == "none" for op, _ in g.normal) for g in out.values()]
    assert zeroise[1] < zeroise[0]  # dividing the Zeroise column removes Zeroise choices
    assert json.loads((tmp_path / "plain.json").read_text())["sha256"]


def test_derive_reads_the_darts_space_from_the_primitives_of_the_alphas_file(tmp_path):
    """An alphas file of a DARTS-space search (8 columns; 7 without Zeroise, the count of S_B) is derived over its own
    ops, named by the file's `primitives`."""
    import torch

    from methods.bnas.genotypes import DARTS_PRIMITIVES, genotype_from_json
    from methods.bnas.search import derive_genotype

    torch.manual_seed(1)
    for prims in (DARTS_PRIMITIVES, tuple(p for p in DARTS_PRIMITIVES if p != "none")):
        an, ar = torch.randn(14, len(prims)), torch.randn(14, len(prims))
        alphas = tmp_path / "alphas.json"
        alphas.write_text(
            json.dumps({"alphas_normal": an.tolist(), "alphas_reduce": ar.tolist(), "primitives": list(prims)})
        )
        res = CliRunner().invoke(cli, ["derive", "--alphas", str(alphas), "--out", str(tmp_path / "g.json")])
        assert res.exit_code == 0, res.output
        g = genotype_from_json(tmp_path / "g.json")
        assert g == derive_genotype(an, ar, prims)
        assert {op for op, _ in g.normal + g.reduce} <= set(prims)


def test_derive_rejects_malformed_alphas_with_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"alphas_normal": [[0.0] * 7] * 13, "alphas_reduce": [[0.0] * 7] * 14}))
    err = _bad(["derive", "--alphas", str(bad), "--out", str(tmp_path / "g.json")], tmp_path)
    assert "alphas_normal: expected 14 x K" in err
    bad.write_text(
        json.dumps({"alphas_normal": [[0.0] * 7] * 14, "alphas_reduce": [[0.0] * 7] * 14, "primitives": ["a"] * 7})
    )
    err = _bad(["derive", "--alphas", str(bad), "--out", str(tmp_path / "g.json")], tmp_path)
    assert "are not the ops of a search space" in err
    assert not (tmp_path / "g.json").exists()
    err = _bad(["derive", "--alphas", str(tmp_path / "missing.json"), "--out", str(tmp_path / "g.json")], tmp_path)
    assert "missing.json" in err


def test_profile_passes_model_kwargs(tmp_path):
    res = CliRunner().invoke(cli, ["profile", "bnas_a", "--json", "--totals"])
    full = json.loads(res.output)
    res = CliRunner().invoke(cli, ["profile", "bnas_a", "--json", "--totals", "-k", "layers=5", "-k", "skip=false"])
    assert res.exit_code == 0, res.output
    small = json.loads(res.output)
    assert full["params_total"] == 5_578_252 and small["params_total"] < full["params_total"] / 3
    err = _bad(["profile", "bnas_a", "-k", "genotype=nope.json"], tmp_path)
    assert "nope.json" in err and "genotype" in err


# ---------------------------------------------------------------------------------------------------------------------
# unknown model keywords and crafted CIFAR-10 batch files: one line, non-zero exit, nothing written

REPO = Path(__file__).resolve().parents[1]


def test_unknown_model_keyword_fails_before_training(cifar_cache, tmp_path):
    run = tmp_path / "runs" / "bnas_a"
    line = _bad(
        [
            "train",
            "--params",
            str(REPO / "pipelines" / "params.yaml"),
            "--method",
            "bnas_a",
            "--data",
            str(cifar_cache),
            "--out",
            str(run),
            "-S",
            "train.model_kwargs.skipp=false",
            "-S",
            "data.train_subset=64",
            "-S",
            "data.test_subset=64",
            "-S",
            "train.device=cpu",
            "-S",
            "tracking.enabled=false",
        ],
        tmp_path,
    )
    assert line.startswith("Error: model 'bnas_a' does not take keyword 'skipp' (train.model_kwargs); it takes: ")
    assert "init_channels" in line and line.endswith("; did you mean skip?")
    assert not run.exists() and not (tmp_path / "runs").exists()


def test_prepare_refuses_a_crafted_cifar_batch_file(tmp_path):
    import pickle

    class Payload:  # unpickling it creates `marker`
        def __reduce__(self):
            return open, (str(marker), "w")

    marker = tmp_path / "pwned"
    src = tmp_path / "src" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    (src / "data_batch_1").write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}))
    out = tmp_path / "cache"
    line = _bad(["prepare", "cifar10", "--source", str(tmp_path / "src"), "--out", str(out)], tmp_path)
    assert "data_batch_1: refused to unpickle global 'io.open'" in line
    assert not marker.exists() and not out.exists()


# Issue 14: strict inputs at the command line (one line, non-zero exit, no traceback, no partial output).
REPO = Path(__file__).resolve().parents[1]
PARAMS = str(REPO / "pipelines" / "params.yaml")


def _bad_in_process(args: list[str]) -> str:
    """As :func:`_bad`, in this process (no interpreter start-up): a clean exit code, one `Error:` line."""
    res = CliRunner().invoke(cli, args)
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    return errors[0]


def test_an_unknown_method_lists_the_closest_names(cifar_cache, tmp_path):
    out = tmp_path / "run"
    args = ["--params", PARAMS, "--data", str(cifar_cache), "--out", str(out)]
    line = _bad(["train", *args, "--method", "bireal_resnet18_cifra"], tmp_path)  # the real console script
    assert "unknown method 'bireal_resnet18_cifra'" in line and "closest: bireal_resnet18_cifar" in line
    line = _bad_in_process(["search", *args, "--method", "search_no_skp"])
    assert "unknown method 'search_no_skp'" in line and "search_no_skip" in line
    assert not out.exists()


@pytest.mark.parametrize(
    "setting,key",
    [
        ("train.batch_size=0", "train.batch_size"),
        ("train.batch_size=-4", "train.batch_size"),
        ("train.lr=-1", "train.lr"),
        ("train.opt=adamw2", "train.opt"),
    ],
)
def test_out_of_range_values_are_config_errors(tmp_path, setting, key):
    out = tmp_path / "run"
    args = ["train", "--params", PARAMS, "--data", str(tmp_path / "data"), "--out", str(out), "--method", "bnas_a"]
    line = _bad_in_process([*args, "-S", setting, "-S", "tracking.enabled=false"])
    assert key in line
    if key == "train.opt":
        assert "unknown optimizer 'adamw2'" in line and "adamw" in line
    assert not out.exists()


def test_config_prints_every_value_with_its_layer():
    res = CliRunner().invoke(cli, ["config", "--params", PARAMS, "--recipe", "shared", "-S", "train.seed=3"])
    assert res.exit_code == 0, res.output
    lines = {ln.split()[0]: ln for ln in res.output.splitlines()}
    assert lines["train.lr"].split()[1] == "0.001" and lines["train.lr"].endswith("# recipe shared")
    assert lines["train.epochs"].endswith("# profile quick") and lines["train.seed"].endswith("# override")
    assert lines["train.amp"].split()[1] == "false" and lines["train.amp"].endswith("# default")
    res = CliRunner().invoke(cli, ["config", "--params", PARAMS, "--json"])  # a plain run: train.model's method
    d = json.loads(res.output)
    assert d["train.model_kwargs.layers"] == {"value": 5, "from": "method bnas_a, profile quick"}
    assert d["train.lr"] == {"value": 0.01, "from": "method bnas_a, profile quick"}


def test_tables_and_figures_take_the_profile_of_the_params_file(tmp_path):
    res = CliRunner().invoke(
        cli, ["tables", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "t"), "--params", PARAMS]
    )
    assert res.exit_code == 0, res.output
    assert "NOT comparable" in (tmp_path / "t" / "cifar10.md").read_text()
    paper = tmp_path / "paper.yaml"
    paper.write_text("profile: paper\nprofiles: {paper: {}}\n")
    res = CliRunner().invoke(
        cli, ["tables", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "p"), "--params", str(paper)]
    )
    assert res.exit_code == 0 and "NOT comparable" not in (tmp_path / "p" / "cifar10.md").read_text()
