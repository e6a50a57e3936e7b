"""Small builders shared by the tests: real CIFAR-10 subsets with timm's tiny `test_resnet` (engine tests), and the
wait for a server started in a subprocess (the `bnas ui` tests)."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import torch

from harness.config import Config, config_from_dict
from harness.engine import Hook


def tiny_config(track: bool = False, train_subset: int = 512, test_subset: int = 256, **train: Any) -> Config:
    """A seconds-long run: timm's 0.37M-parameter test_resnet on 512 real CIFAR-10 train / 256 test images."""
    values = {
        "model": "test_resnet",
        "epochs": 3,
        "batch_size": 64,
        "lr": 0.05,
        "weight_decay": 5e-4,
        "device": "cpu",
        "threads": 2,
        **train,
    }
    return config_from_dict(
        {
            "data": {"train_subset": train_subset, "test_subset": test_subset},
            "train": values,
            "tracking": {"enabled": track},
        }
    )


def strip_perf(d: dict[str, Any]) -> dict[str, Any]:
    """Drop timing/memory entries, which differ between otherwise identical runs."""
    return {k: v for k, v in d.items() if not k.startswith("perf/")}


class CrashAfter(Hook):
    """Raise after epoch `epoch` has been checkpointed (a crash between epochs)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, model, epoch):
        if epoch == self.epoch:
            raise RuntimeError("simulated crash")


class PoisonWeights(Hook):
    """Fill the first parameter with NaN before training step `at_step` (1-based, counted across epochs)."""

    def __init__(self, at_step: int) -> None:
        self.n, self.at = 0, at_step

    def before_forward(self, model):
        self.n += 1
        if self.n == self.at:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


def wait_until_serving(proc: subprocess.Popen, url: str, log: Path, timeout_s: float) -> int:
    """Poll `url` until it answers; returns its HTTP status. Fails (with the server's `log`) if `proc` exits first or
    `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        try:
            return urllib.request.urlopen(url, timeout=2).status
        except OSError:
            time.sleep(0.5)
