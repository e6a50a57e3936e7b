"""`harness/training.py` on real CIFAR-10 images: learning, resume (after a crash, a SIGKILL, with another config), the
NaN guard, the run's precision, global batch and recorded recipe deviations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from _helpers import CrashAfter, PoisonWeights, strip_perf, tiny_config

from harness.config import TrainConfig, load_config
from harness.data import per_process_batch
from harness.errors import CheckpointError, ConfigError, NonFiniteLossError
from harness.training import batch_deviation, precision, run_train

REPO = Path(__file__).resolve().parents[2]


def test_runs_are_float32_unless_a_speed_switch_is_set():
    """The release trains in float32: so do the paper profile's search, CIFAR and ImageNet runs."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision(TrainConfig(), cuda) == "fp32" and precision(TrainConfig(), cpu) == "fp32"
    assert precision(TrainConfig(amp=True), cuda) == "bf16" and precision(TrainConfig(amp=True), cpu) == "fp32"
    assert precision(TrainConfig(amp=True, amp_dtype="float16"), cuda) == "fp16"
    assert precision(TrainConfig(cpu_amp=True), cpu) == "bf16"
    params = REPO / "pipelines" / "params.yaml"
    for method in ("bnas_a", "bnas_d", "bireal_resnet18_cifar"):
        c = load_config(params, {"profile": "paper"}, method=method)
        assert not c.train.amp and not c.train.cpu_amp
    assert not load_config(params, {"profile": "paper"}, method="search").search.amp


def test_the_batch_is_global_and_a_deviation_from_the_recipe_is_named():
    assert per_process_batch(1024, 4) == 256 and per_process_batch(64, 1) == 64
    with pytest.raises(ConfigError, match="train.batch_size 100 .global. is not divisible by the 3 processes"):
        per_process_batch(100, 3)
    params = REPO / "pipelines" / "params.yaml"
    paper = load_config(params, {"profile": "paper"}, method="bnas_d").train
    assert paper.batch_size == 1024 and batch_deviation(paper) == ""
    small = load_config(params, {"profile": "paper", "train.batch_size": 256}, method="bnas_d").train
    assert batch_deviation(small) == "global batch 256, recipe bnas_imagenet_paper says 1024"
    quick = load_config(params, method="bnas_a").train  # the quick profile's small batch is a recorded deviation too
    qb = yaml.safe_load(params.read_text())["profiles"]["quick"]["train"]["batch_size"]
    assert qb < 256 and batch_deviation(quick) == f"global batch {qb}, recipe bnas_cifar_paper says 256"


def test_metrics_record_precision_and_no_maximum_over_test_evaluations(cifar_cache, tmp_path):
    cfg = tiny_config(epochs=2, train_subset=256, test_subset=128)
    m = run_train(cfg, cifar_cache, tmp_path / "run", progress=False)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["precision"] == on_disk["precision"] == "fp32" and on_disk["global_batch"] == 64
    assert not any(k.startswith("best/") for k in on_disk)  # a max over test-set evaluations is selection on test


def test_resuming_a_finished_run_writes_every_output_again(cifar_cache, tmp_path):
    """DVC removes a stage's outputs before it runs it again: `--resume` of a finished run (its checkpoint kept) must
    rewrite them all, identical to the first run's."""
    cfg = tiny_config(epochs=1, train_subset=128, test_subset=64)
    out = tmp_path / "run"
    run_train(cfg, cifar_cache, out, progress=False)
    first = {n: (out / n).read_bytes() for n in ("history.csv", "metrics.json", "config.yaml")}
    weights = torch.load(out / "model.pt", weights_only=True)
    for n in ("history.csv", "metrics.json", "config.yaml", "model.pt"):
        (out / n).unlink()
    run_train(cfg, cifar_cache, out, resume=True, progress=False)
    assert (out / "history.csv").read_bytes() == first["history.csv"]
    assert (out / "config.yaml").read_bytes() == first["config.yaml"]
    strip = lambda d: {k: v for k, v in d.items() if not k.startswith("perf/")}  # noqa: E731
    assert strip(json.loads((out / "metrics.json").read_bytes())) == strip(json.loads(first["metrics.json"]))
    again = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(weights[k], again[k]) for k in weights)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _bnas(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "bnas"), *args]


def test_training_learns_on_real_cifar(cifar_cache, tmp_path):
    cfg = tiny_config(epochs=3, train_subset=2000, test_subset=1000)
    m = run_train(cfg, cifar_cache, tmp_path / "run", progress=False)
    assert m["val/n"] == 1000
    assert m["val/top1"] > 25.0, m  # chance is 10%
    assert m["val/top5"] > m["val/top1"]
    hist = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(hist) == 4 and hist[0].startswith("epoch,")
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "model.pt").is_file()


def test_resume_after_a_crash_gives_identical_results(cifar_cache, tmp_path):
    cfg = tiny_config(epochs=3, drop_path=0.1)
    full = run_train(cfg, cifar_cache, tmp_path / "full", progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_train(cfg, cifar_cache, tmp_path / "cut", hooks=[CrashAfter(1)], progress=False)
    assert not (tmp_path / "cut" / "metrics.json").exists()
    resumed = run_train(cfg, cifar_cache, tmp_path / "cut", resume=True, progress=False)
    assert strip_perf(resumed) == strip_perf(full)
    a, b = _state(tmp_path / "full" / "model.pt"), _state(tmp_path / "cut" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stale_checkpoint_is_kept_and_not_reused(cifar_cache, tmp_path):
    run_train(tiny_config(epochs=1), cifar_cache, tmp_path / "r", progress=False)
    other = run_train(tiny_config(epochs=1, lr=0.01), cifar_cache, tmp_path / "r", resume=True, progress=False)
    assert (tmp_path / "r" / "checkpoint.stale.pt").is_file()
    fresh = run_train(tiny_config(epochs=1, lr=0.01), cifar_cache, tmp_path / "fresh", progress=False)
    assert strip_perf(other) == strip_perf(fresh)


def test_corrupt_checkpoint_is_a_clear_error(cifar_cache, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="checkpoint.pt: corrupt"):
        run_train(tiny_config(epochs=1), cifar_cache, run, resume=True, progress=False)


def test_non_finite_loss_stops_the_run(cifar_cache, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 1, step 2"):
        run_train(tiny_config(epochs=2), cifar_cache, tmp_path / "r", hooks=[PoisonWeights(8 + 3)], progress=False)
    assert (tmp_path / "r" / "checkpoint.pt").is_file()  # epoch 0 survives
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_sigkill_at_any_moment_then_resume_loses_nothing(cifar_cache, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "data: {train_subset: 1024, test_subset: 256}\n"
        "train: {model: test_resnet, epochs: 4, batch_size: 64, device: cpu, threads: 1}\n"
        "tracking: {enabled: false}\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    args = ["train", "--params", str(params), "--data", str(cifar_cache)]
    ref = subprocess.run(_bnas(*args, "--out", str(tmp_path / "ref")), env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _bnas(*args, "--out", str(run)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "history.csv").exists():
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "metrics.json").exists()
    res = subprocess.run(_bnas(*args, "--out", str(run), "--resume"), env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "resuming from" in res.stderr
    a = strip_perf(json.loads((tmp_path / "ref" / "metrics.json").read_text()))
    b = strip_perf(json.loads((run / "metrics.json").read_text()))
    assert a == b


def test_resume_is_exact_for_a_binary_model_with_weight_stats(cifar_cache, tmp_path):
    cfg = tiny_config(
        model="binarynet_resnet18_cifar",
        epochs=2,
        train_subset=128,
        test_subset=64,
        opt="adam",
        lr=5e-4,
        sched="constant",
    )
    full = run_train(cfg, cifar_cache, tmp_path / "full", progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_train(cfg, cifar_cache, tmp_path / "cut", hooks=[CrashAfter(0)], progress=False)
    resumed = run_train(cfg, cifar_cache, tmp_path / "cut", resume=True, progress=False)
    assert "binary/flip_ratio" in full
    assert strip_perf(resumed) == strip_perf(full)


def test_init_from_can_skip_the_binary_latent_weights_as_the_reactnet_a_release(tmp_path):
    import timm

    from harness.training import binary_weight_keys, load_weights

    torch.manual_seed(0)
    step1 = timm.create_model("reactnet_a_cifar", width_mult=0.25, weight_binary=False)
    torch.save(step1.state_dict(), tmp_path / "model.pt")
    torch.manual_seed(1)
    step2 = timm.create_model("reactnet_a_cifar", width_mult=0.25)
    fresh = {k: v.clone() for k, v in step2.state_dict().items()}
    load_weights(step2, tmp_path / "model.pt", skip_binary=True)
    keys = binary_weight_keys(step2)
    assert len(keys) == 26  # 13 blocks x (3x3 + 1x1)
    after, before = step2.state_dict(), step1.state_dict()
    assert all(torch.equal(after[k], fresh[k]) for k in keys)  # kept at step 2's init
    assert all(torch.equal(after[k], before[k]) for k in after if k not in keys)  # the rest from step 1
    load_weights(step2, tmp_path / "model.pt")  # the intended (default) load takes everything
    assert all(torch.equal(step2.state_dict()[k], before[k]) for k in keys)


def test_init_decouple_loads_the_coupled_stage_into_the_decoupled_network(tmp_path):
    import timm

    from harness.training import load_init

    small = {"widths": (8, 12, 23, 45), "last_width": 64}
    torch.manual_seed(0)
    coupled = timm.create_model("binaryduo_resnet18_cifar", **small)
    x = torch.randn(4, 3, 32, 32)
    coupled.train()
    coupled(x)  # BN statistics off their init
    torch.save(coupled.state_dict(), tmp_path / "model.pt")
    tc = TrainConfig(
        model="binaryduo_resnet18_cifar",
        init_from=str(tmp_path / "model.pt"),
        init_decouple=True,
        model_kwargs={**small, "decoupled": True},
    )
    decoupled = timm.create_model("binaryduo_resnet18_cifar", **small, decoupled=True)
    load_init(decoupled, tc)
    torch.testing.assert_close(decoupled.eval()(x), coupled.eval()(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="train.init_decouple"):
        load_init(decoupled, TrainConfig(model="binaryduo_resnet18_cifar", init_from="x", init_decouple=True))


def test_a_teacher_needs_weights_and_distils_from_a_finished_run(cifar_cache, tmp_path):
    from harness.training import build_teacher

    with pytest.raises(ConfigError, match="train.teacher_weights"):
        build_teacher(TrainConfig(teacher="test_resnet"))
    teacher_cfg = tiny_config(epochs=1, train_subset=128, test_subset=64)
    run_train(teacher_cfg, cifar_cache, tmp_path / "teacher", progress=False)
    teacher = build_teacher(TrainConfig(teacher="test_resnet", teacher_weights=str(tmp_path / "teacher" / "model.pt")))
    assert isinstance(teacher, torch.nn.Module)
    cfg = tiny_config(
        model="react_resnet18_cifar",
        epochs=2,
        train_subset=128,
        test_subset=64,
        opt="adam",
        lr=5e-4,
        weight_decay=0.0,
        sched="linear",
        official_lr_offset=True,
        model_kwargs={"widths": [8, 16, 32, 64], "weight_binary": False},
        teacher="test_resnet",
        teacher_weights=str(tmp_path / "teacher" / "model.pt"),
    )
    m = run_train(cfg, cifar_cache, tmp_path / "student", progress=False)
    assert 0 < m["train/loss"] < 10
    saved = yaml.safe_load(open(tmp_path / "student" / "config.yaml"))
    assert saved["train"]["teacher"] == "test_resnet" and saved["train"]["official_lr_offset"] is True
    with pytest.raises(CheckpointError, match="train.teacher_weights"):
        build_teacher(TrainConfig(teacher="resnet18_cifar", teacher_weights=str(tmp_path / "teacher" / "model.pt")))
