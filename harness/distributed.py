"""Process-group setup for torchrun: reads RANK/WORLD_SIZE/LOCAL_RANK, NCCL on CUDA, gloo on CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Runtime", "setup_runtime", "teardown_runtime", "all_reduce_sum", "all_gather_objects"]


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: its device and its place in the (possibly single-process) job."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(device: str = "auto") -> Runtime:
    """Pick the device and, under torchrun (WORLD_SIZE > 1), join the process group.

    Args:
        device: "auto" (CUDA when available), "cpu" or "cuda".
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        from harness.errors import BnasError

        raise BnasError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Runtime(device=dev, rank=rank, world_size=world, local_rank=local)


def teardown_runtime(rt: Runtime) -> None:
    """Leave the process group (if this process joined one)."""
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """Sum a tensor over ranks in place (no-op for one process)."""
    if rt.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any, rt: Runtime) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list for one process)."""
    if not rt.distributed:
        return [obj]
    out: list[Any] = [None] * rt.world_size
    dist.all_gather_object(out, obj)
    return out
