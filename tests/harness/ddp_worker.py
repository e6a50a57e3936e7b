"""Run under `torchrun --nproc_per_node 2`: trains through the engine with DDP (gloo on CPU) and saves, per rank, the
final weights and buffers so that the test can check the ranks stayed in sync."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from harness.config import config_from_dict
from harness.data import build_loaders
from harness.distributed import setup_runtime, teardown_runtime
from harness.models import create_model
from harness.training import fit


def main(data: str, out: str) -> None:
    cfg = config_from_dict(
        {
            "data": {"train_subset": 512, "test_subset": 250},
            "train": {"model": "test_resnet", "epochs": 2, "batch_size": 32, "device": "cpu", "threads": 1},
            "tracking": {"enabled": False},
        }
    )
    torch.set_num_threads(1)
    rt = setup_runtime("cpu")
    train, val, _ = build_loaders(cfg, data, rt)
    torch.manual_seed(cfg.train.seed)
    model = create_model(cfg.train.model, cfg.train.num_classes)
    torch.manual_seed(cfg.train.seed + 1_000_003 * rt.rank)
    fit(cfg, model, train, val, out, rt)
    torch.save(model.state_dict(), Path(out) / f"rank{rt.rank}.pt")
    teardown_runtime(rt)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
