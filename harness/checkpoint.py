"""Checkpoints: written atomically (temporary file, then rename) and read back with `weights_only=True`."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from harness.errors import CheckpointError
from harness.io import atomic_path

__all__ = [
    "save_tensors",
    "save_checkpoint",
    "load_checkpoint",
    "load_tensors",
    "load_state",
    "torch_load_reason",
    "rng_state",
    "set_rng_state",
]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
_WEIGHTS_ONLY = "Weights only load failed"  # torch's weights_only=True refusal, which advises loading unsafely


def _first_sentence(text: str) -> str:
    """The first full sentence of the first non-empty line of `text`, without terminal colour codes (a long one is
    kept whole)."""
    line = next((ln.strip() for ln in _ANSI.sub("", text).splitlines() if ln.strip()), "")
    m = _SENTENCE_END.search(line)
    return line[: m.start()] if m else line


def torch_load_reason(e: BaseException) -> str:
    """Why `torch.load(..., weights_only=True)` refused a file, in one line: torch's first sentence, or, for a file
    that pickles Python objects, that it is not a plain-tensor checkpoint (never torch's advice to load it anyway)."""
    text = _ANSI.sub("", str(e))
    if _WEIGHTS_ONLY in text:
        m = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if m:
            return (
                f"not a plain-tensor checkpoint: it holds pickled Python objects ({m.group(1)}), which bnas never loads"
            )
        # not a pickle of plain tensors either: the unpickler's own reason (e.g. "Unsupported operand 110")
        m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        reason = m.group(1).strip().splitlines()[0] if m else "not a torch file"
        return f"corrupt or not a torch file (UnpicklingError: {reason})"
    first = _first_sentence(text)
    return f"corrupt or not a torch file ({type(e).__name__}{': ' + first if first else ''})"


def load_tensors(path: str | Path, *, what: str, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`, with one-line errors that name `path` and `what` it should be.

    Raises:
        CheckpointError: the file is missing, empty, corrupt or holds pickled Python objects.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; expected {what}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file; expected {what}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"{path}: {torch_load_reason(e)}; expected {what}") from None


def save_tensors(obj: Any, path: str | Path) -> None:
    """Write `obj` with torch.save to `path` atomically: a kill mid-write leaves the previous file intact. The same
    tensors give the same bytes: torch.save is handed an open file, since given a path it names the archive's inner
    folder after the (random) temporary file name."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write a training or search checkpoint `state` to `path` atomically (:func:`save_tensors`)."""
    save_tensors(state, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True` (no arbitrary code from pickles).

    Raises:
        CheckpointError: the file is missing, truncated or not a checkpoint of this harness.
    """
    state = load_tensors(path, what="a bnas checkpoint.pt", map_location=map_location)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a bnas checkpoint (expected a dict with a 'model' state)")
    return state


def load_state(module: torch.nn.Module, state: Any, path: str | Path, keep_init: Collection[str] = frozenset()) -> None:
    """`module.load_state_dict(state)` (strict), raising one line that names `path`: how many keys are missing or
    unexpected (with the first of each), or torch's first mismatch (e.g. a tensor's shape). The keys `keep_init`
    are not loaded: they keep the module's values (and may be missing from `state`).

    Raises:
        CheckpointError: the tensors do not fit `module`.
    """
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    keep = set(keep_init)
    if keep:
        state = {k: v for k, v in state.items() if k not in keep}
    try:
        res = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches: "Error(s) in loading state_dict for X:\n\tsize mismatch for ..."
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise CheckpointError(f"{path}: its tensors do not fit the model ({(lines[1:] or lines)[0]})") from None
    parts = [
        f"{len(keys)} {kind}, e.g. {keys[0]}"
        for kind, keys in (
            ("missing", [k for k in res.missing_keys if k not in keep]),
            ("unexpected", res.unexpected_keys),
        )
        if keys
    ]
    if parts:
        raise CheckpointError(f"{path}: its tensors do not fit the model ({'; '.join(parts)})")


def rng_state() -> dict[str, Any]:
    """The process's torch, CUDA, NumPy and Python RNG states in weights_only-loadable types."""
    np_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
