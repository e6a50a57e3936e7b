"""Process-group setup for torchrun: reads RANK/WORLD_SIZE/LOCAL_RANK, NCCL on CUDA, gloo on CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_reduce

from harness.allocator import keep_freed_memory
from harness.errors import BnasError

__all__ = [
    "Runtime",
    "setup_runtime",
    "teardown_runtime",
    "all_reduce_sum",
    "all_gather_objects",
    "GlobalBatchNorm2d",
    "convert_sync_batchnorm",
]


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
        raise BnasError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
        keep_freed_memory()  # no page faults for the large CPU activations, step after step
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


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the global batch over all ranks (gloo/CPU too).

    torch.nn.SyncBatchNorm only runs on accelerators; this is the same math for any backend: one differentiable
    all-reduce of (sum, sum of squares, count) per call, accumulated in float64. Outside training, or in one process,
    it is a plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        xd = x.double()
        local = torch.cat([xd.sum((0, 2, 3)), (xd * xd).sum((0, 2, 3)), xd.new_full((1,), x.numel() / x.shape[1])])
        tot = all_reduce(local)
        c = x.shape[1]
        n = tot[-1]
        mean = tot[:c] / n
        var = (tot[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            assert self.num_batches_tracked is not None  # tracked statistics come with their counter
            self.num_batches_tracked.add_(1)
            f = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            with torch.no_grad():
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_mean.mul_(1 - f).add_(mean.to(self.running_mean.dtype), alpha=f)
                self.running_var.mul_(1 - f).add_(unbiased.to(self.running_var.dtype), alpha=f)
        inv = torch.rsqrt(var + self.eps).to(x.dtype)
        y = (x - mean.to(x.dtype).view(1, -1, 1, 1)) * inv.view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y


def convert_sync_batchnorm(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Every BatchNorm2d of `module` computes global-batch statistics: torch.nn.SyncBatchNorm on CUDA,
    :class:`GlobalBatchNorm2d` elsewhere. Parameters and buffers are kept."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is torch.nn.BatchNorm2d:
            ref: torch.Tensor | None = next(iter(child.parameters()), None)
            ref = ref if ref is not None else child.running_mean
            kw: dict[str, Any] = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
            new = GlobalBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats, **kw
            )
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return module
