"""harness/checkpoint.py: tensors are written atomically and reproducibly, and read back with weights_only=True."""

from __future__ import annotations

import hashlib
import pickle

import pytest
import torch

from harness.checkpoint import load_checkpoint, save_checkpoint, save_tensors
from harness.errors import CheckpointError


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_same_tensors_give_the_same_bytes(tmp_path):
    """torch.save names its archive's inner folder after the file it is given; the temporary file of an atomic write
    has a random name, so a path would give different bytes for the same model.pt (and DVC a new hash)."""
    torch.manual_seed(0)
    state = torch.nn.Linear(4, 3).state_dict()
    save_tensors(state, tmp_path / "a" / "model.pt")
    save_tensors(state, tmp_path / "b" / "model.pt")
    assert _digest(tmp_path / "a" / "model.pt") == _digest(tmp_path / "b" / "model.pt")
    back = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    assert all(torch.equal(back[k], v) for k, v in state.items())
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["model.pt"]  # no temporary file left


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 1}, path)
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):  # a lambda does not pickle
        save_checkpoint({"model": {"w": torch.zeros(2)}, "epoch": 2, "bad": lambda: 0}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        load_checkpoint(path)
