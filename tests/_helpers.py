"""Small builders shared by the tests: real CIFAR-10 subsets with timm's tiny `test_resnet` (engine tests), and the
wait for a server started in a subprocess (the `bnas ui` tests), and the test-only switches of the binary layers and
the search supernet (an exact XNOR scale, loading a reference supernet into a shared one)."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import torch

from harness.config import Config, config_from_dict
from harness.engine import Hook

# The data copy's README (sha256 of the sorted sha256sum lines, first 16 hex digits).
README_FINGERPRINTS = {
    "cifar10/train": "76eb1d1279d1d304",
    "cifar10/test": "41953a0708927013",
    "imagenette/train": "99b31302f3766761",
    "imagenette/val": "db4c2542894ba32c",
}


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


def pow2_xnor_alpha(w: torch.Tensor) -> torch.Tensor:
    """XNOR-Net's per-filter scale mean |W| rounded to a power of two: patched over
    `methods.binary.quantizers._xnor_alpha`, it makes the scale an exact multiply, so that binary sums are exact in
    float64 and two implementations of the same math compare bit for bit (docs/internals.md, "Testing exactness")."""
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    return torch.exp2(torch.round(torch.log2(alpha)))


@torch.no_grad()
def copy_from_reference(shared: Any, ref: Any) -> None:
    """Load a reference supernet's weights, BN statistics and alphas into a shared one of the same configuration.

    Every BN of the reference that reads the same state has the same statistics; the first edge's is taken.
    """
    from methods.bnas.search_cell import SearchCell
    from methods.bnas.supernet_shared import SharedSearchCell

    if shared.impl != "shared" or ref.impl != "reference" or len(shared.cells) != len(ref.cells):
        raise ValueError("copy_from_reference needs a shared and a reference SuperNet of the same configuration")
    own = shared.state_dict()
    for name, t in ref.state_dict().items():
        if ".edges." not in name:
            own[name].copy_(t)
    for sc, rc in zip(shared.cells, ref.cells, strict=True):
        assert isinstance(sc, SharedSearchCell) and isinstance(rc, SearchCell)
        for h, ops in enumerate(sc.state_ops):
            first = rc.edges[sc.edge_ids[h][0]]
            if ops.bn is not None:
                ops.bn.load_state_dict(first.op(next(iter(ops.convs))).bn.state_dict())
            for name, pool in ops.pools.items():
                pool[1].load_state_dict(first.op(name)[1].state_dict())
            for name in ops.convs:
                for e in sc.edge_ids[h]:
                    sc.edge_weight(e, name).copy_(rc.edges[e].conv(name).weight)


def bnas_searcher(net: Any, **override: Any) -> Any:
    """A BNAS searcher over `net` with the paper's hyperparameters (the `search` config's defaults), `override` on
    top (e.g. `epochs=2`)."""
    from harness.config import SearchConfig
    from harness.searching import searcher_hyperparameters
    from methods.bnas.search import BnasSearcher

    return BnasSearcher(net, **{**searcher_hyperparameters(SearchConfig()), **override})


def one_training_step(model: Any, batch: Any, cfg: Any, opt: Any, hook: Any) -> dict[str, float]:
    """`train_one_epoch` over the single `batch` on CPU with the label loss and `hook` (its epoch started): the
    epoch's train metrics."""
    import torch
    from torch import nn

    from harness.distributed import Runtime
    from harness.engine import TrainLoss, build_scheduler, train_one_epoch

    hook.on_epoch_start(model, 0, 1)
    sched = build_scheduler(cfg, opt, 1)
    loss = TrainLoss(nn.CrossEntropyLoss())
    row, _ = train_one_epoch(
        model, [batch], opt, sched, loss, cfg, Runtime(torch.device("cpu")), epoch=0, global_step=0, hooks=[hook]
    )
    return row
