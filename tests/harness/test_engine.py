"""The training engine on real CIFAR-10 images: schedules, hooks, learning, resume, NaN guard."""

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
from _helpers import CrashAfter, PoisonWeights, strip_perf, tiny_config
from torch import nn

from harness.config import TrainConfig
from harness.data import CifarLoader, load_cifar10
from harness.distributed import Runtime
from harness.engine import Hook, build_optimizer, build_scheduler, train_one_epoch
from harness.errors import CheckpointError, NonFiniteLossError
from harness.training import run_train

REPO = Path(__file__).resolve().parents[2]


def _lrs(sched, opt, steps):
    out = []
    for s in steps:
        sched.step(s)
        out.append((opt.param_groups[0]["lr"], opt.param_groups[0].get("momentum")))
    return out


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_onecycle_matches_the_bnas_cifar_recipe():
    # bnas.md §5.3: lr_max 0.05, 600 epochs x 196 iterations; 2.5e-3 at epoch 0, 2.676e-3 at epoch 1,
    # peak 0.05 at 45%, back to 2.5e-3 at 90%, 2.5e-5 at the end; momentum 0.95 -> 0.85 -> 0.95.
    cfg = TrainConfig(epochs=600, lr=0.05)
    p = nn.Parameter(torch.zeros(1))
    opt = build_optimizer(cfg, nn.ParameterList([p]))
    sched = build_scheduler(cfg, opt, 196)
    assert opt.param_groups[0]["lr"] == pytest.approx(2.5e-3)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.95)
    total = 600 * 196
    seen = {}
    for step in range(1, total):
        sched.step(step)
        if step in (196, int(0.45 * total) - 1, int(0.9 * total) - 2, total - 1):
            seen[step] = (opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"])
    assert seen[196][0] == pytest.approx(2.676e-3, rel=1e-3)
    assert seen[int(0.45 * total) - 1] == pytest.approx((0.05, 0.85))
    assert seen[int(0.9 * total) - 2] == pytest.approx((2.5e-3, 0.95))
    assert seen[total - 1][0] == pytest.approx(2.5e-5)


def test_cosine_warm_restarts_match_the_bnas_imagenet_recipe():
    # bnas.md §5.4: CosineAnnealingWarmRestarts(T_0=50, eta_min=0) over 250 epochs, stepped per iteration.
    cfg = TrainConfig(epochs=250, lr=0.05, sched="cosine_restarts", restart_epochs=50, min_lr=0.0)
    p = nn.Parameter(torch.zeros(1))
    opt = build_optimizer(cfg, nn.ParameterList([p]))
    sched = build_scheduler(cfg, opt, 10)
    got = [lr for lr, _ in _lrs(sched, opt, [0, 250, 499, 500, 750, 2000, 2250, 2499])]
    assert got[0] == pytest.approx(0.05) and got[3] == pytest.approx(0.05) and got[5] == pytest.approx(0.05)
    assert got[1] == pytest.approx(0.025) and got[4] == pytest.approx(0.025) and got[6] == pytest.approx(0.025)
    assert got[2] < 1e-4 and got[7] < 1e-4


def test_optimizer_is_plain_momentum_sgd_with_decay_on_everything():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = build_optimizer(TrainConfig(weight_decay=3e-6), m)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] is False
    assert all(g["weight_decay"] == 3e-6 for g in opt.param_groups)
    assert sum(len(g["params"]) for g in opt.param_groups) == 4  # conv weight+bias, BN weight+bias


class SignWeights(Hook):
    """An XNOR-style weight hook: forward/backward with sign(W), then restore W and scale its gradient by 2."""

    def __init__(self) -> None:
        self.latent: dict[nn.Parameter, torch.Tensor] = {}
        self.calls: list[str] = []

    def _convs(self, model):
        return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]

    def before_forward(self, model):
        self.calls.append("before_forward")
        for w in self._convs(model):
            self.latent[w] = w.detach().clone()
            w.data.copy_(torch.where(w >= 0, 1.0, -1.0))

    def after_backward(self, model):
        self.calls.append("after_backward")
        for w in self._convs(model):
            w.data.copy_(self.latent[w])
            w.grad.mul_(2.0)

    def after_step(self, model):
        self.calls.append("after_step")


def test_weight_hooks_binarise_restore_and_rescale(cifar_cache):
    ds = load_cifar10(cifar_cache)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    )
    loader = CifarLoader(ds.train_x[:64], ds.train_y[:64], 64, train=False)
    batch = next(iter(loader))
    w0 = model[0].weight.detach().clone()
    # reference: the gradient of the loss at the sign-binarised weights
    ref = nn.Sequential(*[m for m in model])
    with torch.no_grad():
        ref[0].weight.copy_(torch.where(w0 >= 0, 1.0, -1.0))
    g = torch.autograd.grad(nn.functional.cross_entropy(ref(batch[0]), batch[1]), ref[0].weight)[0]
    with torch.no_grad():
        ref[0].weight.copy_(w0)
    cfg = TrainConfig(lr=0.1, weight_decay=0.0, sched="constant", opt="momentum")
    opt = build_optimizer(cfg, model)
    hook = SignWeights()
    train_one_epoch(
        model,
        [batch],
        opt,
        build_scheduler(cfg, opt, 1),
        nn.CrossEntropyLoss(),
        cfg,
        Runtime(torch.device("cpu")),
        epoch=0,
        global_step=0,
        hooks=[hook],
    )
    assert hook.calls == ["before_forward", "after_backward", "after_step"]
    torch.testing.assert_close(model[0].weight.detach(), w0 - 0.1 * 2.0 * g)  # latent weights, rescaled gradient


def test_training_learns_on_real_cifar(cifar_cache, tmp_path):
    cfg = tiny_config(epochs=3, train_subset=2000, test_subset=1000)
    m = run_train(cfg, cifar_cache, tmp_path / "run", progress=False)
    assert m["val/n"] == 1000
    assert m["val/top1"] > 25.0, m  # chance is 10%
    assert m["val/top5"] > m["val/top1"]
    hist = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(hist) == 4 and hist[0].startswith("epoch,")
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "model.pt").is_file()


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


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


def _bnas(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "bnas"), *args]


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


def test_linear_schedule_decays_to_min_lr():
    cfg = TrainConfig(epochs=10, lr=0.001, sched="linear", opt="adam", min_lr=0.0)
    p = nn.Parameter(torch.zeros(1))
    opt = build_optimizer(cfg, nn.ParameterList([p]))
    sched = build_scheduler(cfg, opt, 10)
    got = [lr for lr, _ in _lrs(sched, opt, [0, 50, 99])]
    assert got == pytest.approx([0.001, 0.0005, 0.00001], abs=1e-9)


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


def test_cpu_amp_autocasts_to_bf16_on_cpu_only_when_asked():
    from harness.config import TrainConfig
    from harness.engine import autocast

    x, lin = torch.randn(2, 4), torch.nn.Linear(4, 3)
    with autocast(TrainConfig(), torch.device("cpu")):
        assert lin(x).dtype == torch.float32  # default: CPU runs stay float32
    with autocast(TrainConfig(cpu_amp=True), torch.device("cpu")):
        assert lin(x).dtype == torch.bfloat16
