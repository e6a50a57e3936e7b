"""Host memory allocator settings for CPU runs.

glibc's malloc serves every block above its mmap threshold (which adapts up to 32 MB) with a fresh mmap and unmaps
it on free.
A BNAS-A training step on CIFAR-10 (batch 64) allocates dozens of 19-38 MB activations and gradients, so every one
of them page-faults its memory in again, step after step (50-120 thousand minor faults per step on these machines).
:func:`keep_freed_memory` makes glibc take every block from its heap and keep freed memory for reuse: no page faults
after the first steps, the same peak RSS within a few per cent (freed blocks are reused, not added), and BNAS-A
training steps ~5-10 % faster, search iterations ~10 % faster (`make bench`, see the README).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any

__all__ = ["cpu_allocator_setting", "keep_freed_memory"]

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_applied = False


def _mallopt() -> Any | None:
    """glibc's mallopt, or None (not Linux/glibc, or BNAS_KEEP_FREED_MEMORY=0)."""
    if os.environ.get("BNAS_KEEP_FREED_MEMORY", "1") in ("0", "false", "False") or not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def cpu_allocator_setting() -> str:
    """What :func:`keep_freed_memory` does in this environment (recorded with benchmark results)."""
    return "glibc heap, freed memory kept (harness.allocator)" if _mallopt() is not None else "default"


def keep_freed_memory() -> bool:
    """Serve all allocations from glibc's heap and never give freed memory back to the OS (mallopt M_MMAP_MAX = 0,
    M_TRIM_THRESHOLD = SIZE_MAX). Process-wide, for allocations made afterwards. Returns whether it is in effect:
    False off Linux/glibc or with BNAS_KEEP_FREED_MEMORY=0."""
    global _applied
    if not _applied and (mallopt := _mallopt()) is not None:
        # glibc converts the int -1 to SIZE_MAX (do_set_trim_threshold takes a size_t): never trim. 2**31 - 1 would
        # trim whenever 2 GB lie free at the heap's top, which the end of a BNAS search step can reach
        _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
    return _applied
