"""Run alone (one process) or under `torchrun --nproc_per_node 2`: three BNAS search iterations on global batches of
8, each rank taking its shard, in float64 with the XNOR scale rounded to a power of two (exact binary sums) and the
BNs converted to global-batch statistics as `bnas search` does; saves each rank's supernet state and step metrics.

The inputs are Gaussian tensors, not images: this checks the distributed math. Real images have exact ties in
max-pool windows (zero padding, quantised pixels, ReLU zeros) where the gradient's route depends on the last bit of
the BN statistics, which one process and a sum over ranks round differently (docs/internals.md, "Testing exactness":
a last-bit difference before a sign flips it). The real-CIFAR path is `test_bnas_search_runs_under_torchrun...`; the
loader's sharding is tested in test_data.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from harness.distributed import convert_sync_batchnorm, setup_runtime, teardown_runtime
from methods.binary import quantizers
from methods.bnas.supernet import SuperNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared helpers
from _helpers import bnas_searcher, pow2_xnor_alpha  # noqa: E402

quantizers._xnor_alpha = pow2_xnor_alpha  # exact scales (power of two): see the module docstring

GLOBAL_BATCH = 8


def main(out: str, checkpointing: str = "0") -> None:
    torch.set_num_threads(1)
    rt = setup_runtime("cpu")
    g = torch.Generator().manual_seed(3)
    batches = [
        (
            torch.randn(GLOBAL_BATCH, 3, 16, 16, dtype=torch.float64, generator=g),
            torch.randint(0, 10, (8,), generator=g),
        )
        for _ in range(6)
    ]
    batches = [(x[rt.rank :: rt.world_size], y[rt.rank :: rt.world_size]) for x, y in batches]
    torch.manual_seed(0)
    net = SuperNet(init_channels=4, layers=5, activation_checkpointing=checkpointing == "1").double()
    if rt.distributed:
        net = convert_sync_batchnorm(net, rt.device)
    s = bnas_searcher(net, epochs=2)
    metrics = []
    for i in range(3):
        s.new_epoch(i // 2)
        metrics.append(s.step(batches[2 * i], batches[2 * i + 1]))
    Path(out).mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), Path(out) / f"rank{rt.rank}.pt")
    (Path(out) / f"rank{rt.rank}.json").write_text(
        json.dumps({"metrics": metrics, "genotype": repr(s.genotype()), "world_size": rt.world_size})
    )
    teardown_runtime(rt)


if __name__ == "__main__":
    main(*sys.argv[1:])
