"""The `bnas` CLI: every command has help; bad input gives one line and a non-zero exit; a real run end to end."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _helpers import wait_until_serving
from click.testing import CliRunner

from harness.cli import cli

BNAS = str(Path(sys.executable).parent / "bnas")
REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["prepare", "train", "search", "derive", "evaluate", "import-checkpoint", "profile", "ui"]


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
    """The first case runs the real console script (stderr, exit code); the others the same CLI in this process."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: many\n")
    line = _bad(["train", "--params", str(bad), "--data", str(cifar_cache), "--out", str(tmp_path / "r")], tmp_path)
    assert "bad.yaml" in line and "train.epochs" in line
    good = tmp_path / "good.yaml"
    good.write_text("train: {model: resnet_18, epochs: 1}\ntracking: {enabled: false}\n")
    line = _bad_in_process(
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
        ]
    )
    assert "train.modle" in line
    line = _bad_in_process(["train", "--params", str(good), "--data", str(cifar_cache), "--out", str(tmp_path / "r")])
    assert "unknown model 'resnet_18'" in line
    line = _bad_in_process(
        ["train", "--params", str(good), "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "r")]
    )
    assert "nodata" in line and "bnas prepare" in line
    line = _bad_in_process(["prepare", "cifar10", "--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")])
    assert "nowhere" in line
    line = _bad_in_process(["evaluate", "--run", str(tmp_path), "--data", str(cifar_cache)])
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _procs() -> list[tuple[int, int, int]]:
    """(pid, ppid, process group) of every process (Linux /proc; zombies included)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out.append((int(stat.parent.name), int(fields[1]), int(fields[2])))  # after "pid (comm)": state ppid pgrp
    return out


def _group_members(pgid: int) -> list[int]:
    """Pids of process group `pgid`."""
    return [pid for pid, _, group in _procs() if group == pgid]


def _children(pid: int) -> list[int]:
    return [p for p, ppid, _ in _procs() if ppid == pid]


@pytest.mark.slow  # ~28 s on a busy 2-core machine (MLflow's server and its workers start up)
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process groups from Linux /proc")
def test_ui_serves_on_loopback_and_sigterm_stops_the_whole_server(tmp_path):
    """`kill PID` of `bnas ui` ends the MLflow server it started (its own process group: mlflow, uvicorn and its
    workers), not only bnas; nothing keeps listening, nothing is left, not even a zombie."""

    port = _free_port()
    env = dict(
        os.environ,
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",  # the store lives in tmp_path
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),  # this checkout's harness
    )
    with open(tmp_path / "ui.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "ui", "--port", str(port), "--workers", "2"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pgid = None
    try:
        status = wait_until_serving(proc, f"http://127.0.0.1:{port}/health", tmp_path / "ui.log", 90)
        assert status == 200
        (child,) = _children(proc.pid)  # `mlflow ui`
        pgid = os.getpgid(child)
        assert pgid == child != os.getpgid(proc.pid)  # the server runs in a process group of its own
        assert len(_group_members(pgid)) >= 4  # mlflow, uvicorn's supervisor and its 2 workers
        proc.send_signal(signal.SIGTERM)  # to bnas only, as `kill PID` does
        assert proc.wait(timeout=30) == 0, (tmp_path / "ui.log").read_text()  # mlflow's code: a clean shutdown
        assert not _accepts(port)
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
        assert "Traceback" not in (tmp_path / "ui.log").read_text()
    finally:
        for g in (pgid, proc.pid):
            if g is not None and _group_members(g):
                os.killpg(g, signal.SIGKILL)
        proc.wait(timeout=30)


def test_version_prints_the_package_and_its_version():
    from importlib.metadata import version

    res = CliRunner().invoke(cli, ["--version"])
    assert res.exit_code == 0
    assert res.output == f"bnas-harness {version('bnas-harness')}\n"


def _run_dir(tmp_path: Path) -> Path:
    """A run folder with a real config.yaml (of the default params) and no model.pt."""
    from harness.config import load_config, save_config

    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(None), run / "config.yaml")
    return run


def _evaluate_error(run: Path, tmp_path: Path) -> str:
    res = CliRunner().invoke(cli, ["evaluate", "--run", str(run), "--data", str(tmp_path / "nodata")])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    (line,) = res.output.splitlines()
    assert line.startswith("Error: ")
    return line


def test_evaluate_names_a_missing_model_pt(tmp_path):
    run = _run_dir(tmp_path)
    line = _evaluate_error(run, tmp_path)
    assert f"{run / 'model.pt'}: not found" in line and "bnas train" in line
    assert "init_from" not in line


def test_evaluate_quotes_torch_in_full_sentences_for_a_corrupt_model_pt(tmp_path):
    import torch

    run = _run_dir(tmp_path)
    torch.save({"w": torch.zeros(100)}, run / "model.pt")
    data = (run / "model.pt").read_bytes()
    (run / "model.pt").write_bytes(data[: len(data) // 2])  # truncated: torch's reason is a long paragraph
    line = _evaluate_error(run, tmp_path)
    assert str(run / "model.pt") in line
    assert "failed finding central directory.)" in line  # its first sentence, whole
    assert "This is an internal" not in line


def test_evaluate_refuses_pickled_objects_without_suggesting_weights_only_false(tmp_path):
    import argparse

    import torch

    run = _run_dir(tmp_path)
    torch.save({"w": torch.zeros(2), "opts": argparse.Namespace(lr=0.1)}, run / "model.pt")
    line = _evaluate_error(run, tmp_path)
    assert "not a plain-tensor checkpoint" in line and "argparse.Namespace" in line
    for advice in ("weights_only", "can still be loaded", "safe_globals", "\x1b"):
        assert advice not in line


def test_checkpoint_errors_keep_torch_sentences_whole_and_drop_the_unsafe_advice(tmp_path):
    """The messages of harness/checkpoint.py's loaders (used by training and resume), as the CLI prints them: one
    line, torch's reason whole, the file's expected role named, never torch's advice to load unsafely."""
    import argparse

    import torch

    from harness.checkpoint import load_checkpoint
    from harness.errors import CheckpointError
    from harness.training import load_weights

    torch.save({"model": {}, "opts": argparse.Namespace(lr=0.1)}, tmp_path / "pickled.pt")
    torch.save({"w": torch.zeros(100)}, tmp_path / "ok.pt")
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:300])
    lines = []
    for load in (lambda p: load_weights(torch.nn.Linear(2, 2), p, what="train.init_from"), load_checkpoint):
        for name in ("pickled.pt", "trunc.pt", "missing.pt"):
            with pytest.raises(CheckpointError) as e:
                load(tmp_path / name)
            lines.append(str(e.value))
    for line in lines:
        assert "\n" not in line and "\x1b" not in line and "weights_only" not in line
        assert "can still be loaded" not in line
    assert all("not a plain-tensor checkpoint" in ln and "argparse.Namespace" in ln for ln in lines[0::3])
    assert all("failed finding central directory.)" in ln for ln in lines[1::3]), lines
    assert all(ln.endswith("missing.pt: not found; expected train.init_from") for ln in lines[2:3]), lines
    assert lines[5].endswith("missing.pt: not found; expected a bnas checkpoint.pt"), lines
    with pytest.raises(
        CheckpointError,
        match=r"ok.pt: its tensors do not fit the model \(2 missing, e.g. weight; "
        r"1 unexpected, e.g. w\)",
    ):
        load_weights(torch.nn.Linear(2, 2), tmp_path / "ok.pt")
    torch.save({"weight": torch.zeros(3, 3), "bias": torch.zeros(2)}, tmp_path / "shape.pt")
    with pytest.raises(
        CheckpointError,
        match=r"shape.pt: its tensors do not fit the model \(size mismatch for "
        r"weight: copying a param with shape torch.Size\(\[3, 3\]\)",
    ):
        load_weights(torch.nn.Linear(2, 2), tmp_path / "shape.pt")


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


def test_cbcn_center_loss_fine_tune_starts_from_the_cross_entropy_model(cifar_cache, tmp_path):
    """CBCN's optional second stage (recipe cbcn_paper_center): the repository's method entries, tiny, on real
    CIFAR-10; the fine-tune logs its center loss per epoch and records where it started."""
    tiny = [
        "-S",
        "data.train_subset=64",
        "-S",
        "data.test_subset=64",
        "-S",
        "train.epochs=2",
        "-S",
        "train.batch_size=32",
    ]
    tiny += [
        "-S",
        "train.model_kwargs.widths=[8, 16, 32, 64]",
        "-S",
        "tracking.enabled=false",
        "-S",
        "train.device=cpu",
    ]
    runner = CliRunner()
    s1, s2 = tmp_path / "ce", tmp_path / "center"
    base = ["train", "--params", PARAMS, "--data", str(cifar_cache), *tiny]
    res = runner.invoke(cli, [*base, "--method", "cbcn_resnet18_cifar", "--out", str(s1)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        cli, [*base, "--method", "cbcn_resnet18_cifar_center", "--out", str(s2), "--init-from", str(s1 / "model.pt")]
    )
    assert res.exit_code == 0, res.output
    hist = list(csv.DictReader((s2 / "history.csv").read_text().splitlines()))
    assert len(hist) == 2 and all(float(r["train/center_loss"]) > 0 for r in hist)
    assert "train/center_loss" not in (s1 / "history.csv").read_text()
    cfg = yaml.safe_load((s2 / "config.yaml").read_text())["train"]
    assert (cfg["recipe"], cfg["center_loss"], cfg["init_from"]) == ("cbcn_paper_center", 0.01, str(s1 / "model.pt"))


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
    for name, extra in {
        "plain": [],
        "gamma": ["--gamma", "3"],
        "row": ["--gamma", "3", "--official-gamma-bug"],
    }.items():
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


def test_derive_of_a_bats_search_ranks_the_weights_the_supernet_mixed_with(tmp_path):
    """A BATS-space alphas file records its softmax temperature: `bnas derive` derives from softmax(alpha / T), the
    searcher's own genotype; a temperature that is not a positive number is one clear error."""
    import torch

    from methods.bnas.genotypes import BATS_PRIMITIVES, genotype_from_json
    from methods.bnas.search import derive_genotype

    torch.manual_seed(2)
    an, ar = torch.randn(14, 8), torch.randn(14, 8)
    alphas = tmp_path / "alphas.json"
    d = {"alphas_normal": an.tolist(), "alphas_reduce": ar.tolist(), "primitives": list(BATS_PRIMITIVES)}
    alphas.write_text(json.dumps({**d, "temperature": 0.25}))
    res = CliRunner().invoke(cli, ["derive", "--alphas", str(alphas), "--out", str(tmp_path / "g.json")])
    assert res.exit_code == 0, res.output
    g = genotype_from_json(tmp_path / "g.json")
    assert g == derive_genotype(4 * an, 4 * ar, BATS_PRIMITIVES)
    alphas.write_text(json.dumps({**d, "temperature": -1}))
    err = _bad_in_process(["derive", "--alphas", str(alphas), "--out", str(tmp_path / "g2.json")])
    assert "temperature: expected a positive number, got -1" in err and not (tmp_path / "g2.json").exists()


def test_derive_rejects_malformed_alphas_with_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"alphas_normal": [[0.0] * 7] * 13, "alphas_reduce": [[0.0] * 7] * 14}))
    err = _bad(["derive", "--alphas", str(bad), "--out", str(tmp_path / "g.json")], tmp_path)
    assert "alphas_normal: expected 14 x K" in err
    bad.write_text(
        json.dumps({"alphas_normal": [[0.0] * 7] * 14, "alphas_reduce": [[0.0] * 7] * 14, "primitives": ["a"] * 7})
    )
    err = _bad_in_process(["derive", "--alphas", str(bad), "--out", str(tmp_path / "g.json")])
    assert "are not the ops of a search space" in err
    assert not (tmp_path / "g.json").exists()
    err = _bad_in_process(["derive", "--alphas", str(tmp_path / "missing.json"), "--out", str(tmp_path / "g.json")])
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


def test_profile_prints_the_papers_cost_beside_ours(monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the default --reference: results/reference.yaml
    res = CliRunner().invoke(cli, ["profile", "abcnet_resnet18", "--dataset", "imagenet", "--totals"])
    assert res.exit_code == 0, res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("paper OPs")]
    # the poster's 1.48e8 group against our 1.64e8 (a binary ResNet-18 under the default policy), with the note
    assert "(poster, ABC-Net ResNet18): 1.48e8; ours 1.64e8 (ours is 1.11x the paper's)" in line and "0.16e8" in line
    js = json.loads(CliRunner().invoke(cli, ["profile", "abcnet_resnet18", "--dataset", "imagenet", "--json"]).output)
    assert [r["flops"] for r in js["paper"]] == [1.48]
    cifar = CliRunner().invoke(cli, ["profile", "abcnet_resnet18_cifar", "--totals"]).output
    assert "paper OPs" not in cifar  # no CIFAR-10 figure to compare with


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
        ("train.center_loss=-0.1", "train.center_loss"),
        ("train.center_lr=0", "train.center_lr"),
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
