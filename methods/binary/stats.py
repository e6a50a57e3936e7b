"""Per-layer statistics of binary weights: flip ratio and latent-weight saturation, to explain seed variance.

- flip ratio: the fraction of binary weights whose sign changed in an optimizer step;
- saturation: the fraction of latent weights with |W| >= 1 (stuck at the clip boundary, no STE gradient).
"""

from __future__ import annotations

import torch
from torch import nn

from methods.binary.layers import BinaryConv2d
from methods.binary.quantizers import binary_sign

__all__ = ["BinaryWeightStats"]


class BinaryWeightStats:
    """Tracks the signs of every binary-weight conv of `model` between optimizer steps.

    Call :meth:`snapshot` before a step and :meth:`update` after it; :meth:`summary` returns the mean flip ratio per
    step since the last summary and the current saturation, overall and per layer.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, BinaryConv2d) and m.binary_weight}
        self._prev: dict[str, torch.Tensor] = {}
        self._flips = {n: 0.0 for n in self.layers}
        self._steps = 0

    def __bool__(self) -> bool:
        return bool(self.layers)

    @torch.no_grad()
    def snapshot(self) -> None:
        """Remember the current signs."""
        self._prev = {n: binary_sign(m.weight) for n, m in self.layers.items()}

    @torch.no_grad()
    def update(self) -> None:
        """Count sign changes since :meth:`snapshot`."""
        if not self._prev:
            return
        for n, m in self.layers.items():
            self._flips[n] += float((binary_sign(m.weight) != self._prev[n]).float().mean())
        self._steps += 1

    @torch.no_grad()
    def summary(self, per_layer: bool = False) -> dict[str, float]:
        """`binary/flip_ratio` (mean per step) and `binary/saturation` (weighted by layer size); resets counters."""
        total = sum(m.weight.numel() for m in self.layers.values()) or 1
        sat = {n: float((m.weight.abs() >= 1.0).float().mean()) for n, m in self.layers.items()}
        flips = {n: f / max(self._steps, 1) for n, f in self._flips.items()}
        out = {
            "binary/flip_ratio": sum(flips[n] * m.weight.numel() for n, m in self.layers.items()) / total,
            "binary/saturation": sum(sat[n] * m.weight.numel() for n, m in self.layers.items()) / total,
        }
        if per_layer:
            out.update({f"binary/flip_ratio/{n}": v for n, v in flips.items()})
            out.update({f"binary/saturation/{n}": v for n, v in sat.items()})
        self._flips = {n: 0.0 for n in self.layers}
        self._steps = 0
        return out
