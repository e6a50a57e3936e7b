"""Cost counter and binarisation audit (`bnas profile`): params, memory, BOPs, FLOPs and OPs from a real forward pass.

Counting follows hooks on every Conv2d/Linear during one forward pass at the dataset's input size, so it works for any
model (baselines, BNAS cells) without hand-written tables. MACs of a conv = k_h*k_w*(C_in/groups)*C_out*H_out*W_out.

Policies (named, printed and stored with every run):
- "bireal" (default, the convention of Bi-Real, XNOR-Net, ReActNet and BNAS tables): a conv whose input AND weight
  are binary contributes BOPs; every other conv/linear contributes FLOPs (stem, real shortcuts, classifier);
  BN, pooling, adds and scale multiplies are not counted. OPs = FLOPs + BOPs / 64.
- "bireal_scales": as "bireal", plus one real multiply per output element of every binary conv with an output scale
  (XNOR-Net++'s Gamma) as FLOPs: the cost nobody counts in the papers.
- "binary_weights": a conv counts as BOPs when its weights are binary, even with a real input: the convention under
  which BNAS-D's residual 2x2 convs (binary weights in the first release) are binary and its FLOPs come to ~1.48e8.
- "all_conv_binary": every Conv2d counts as BOPs, only Linear as FLOPs (the convention of the bnn package README, which
  counts even the real stem as binary) — for comparison with such figures only.
Memory = 1 bit per binary weight + 32 bits per real parameter (Bi-Real convention).

A quantizer may declare `planes` (methods.binary.quantizers.Quantizer): a binary conv's MACs count that many times
per input and weight plane (ABC-Net's M x N bases; BinaryDuo's ternary activation = 2 binary ones) and a weight
quantizer's planes multiply the layer's stored bits. The audit checks every binary conv's quantised input against its
quantizer's declared `alphabet` ({-1, +1} unless declared otherwise: BinaryDuo's {0, 1}).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from torch import nn

from methods.binary import BinaryConv2d
from methods.binary.quantizers import Quantizer

__all__ = ["POLICIES", "DEFAULT_POLICY", "LayerCost", "Profile", "profile_model", "format_profile"]

POLICIES: dict[str, str] = {
    "bireal": "BOPs = binary-input x binary-weight conv MACs; FLOPs = other conv/linear MACs; OPs = FLOPs + BOPs/64",
    "bireal_scales": "bireal + one FLOP per output element of every scaled binary conv (XNOR-Net++ Gamma)",
    "all_conv_binary": "every Conv2d MAC is a BOP (bnn README convention); Linear MACs are FLOPs",
    "binary_weights": "BOPs = MACs of every conv with binary weights, real input or not (the BNAS tables' reading); "
    "FLOPs = the rest",
}
DEFAULT_POLICY = "bireal"


@dataclass
class LayerCost:
    """Cost of one conv/linear layer for a single input image."""

    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    binary: bool
    macs: int
    bops: int
    flops: int
    params_real: int
    params_binary: int
    pad_value: float | None = None
    input_values_ok: bool | None = None  # binary input really in its quantizer's alphabet
    alphabet: tuple[float, ...] | None = None  # the values the input quantizer declares (binary convs)
    input_zeros: int = 0


@dataclass
class Profile:
    """A model's cost under a policy; `to_json()` has the stable keys other tools read."""

    model: str
    input_size: tuple[int, int, int]
    policy: str
    layers: list[LayerCost]
    params_total: int
    params_binary: int
    params_real: int
    bops: int
    flops: int
    audit: dict[str, Any] = field(default_factory=dict)

    @property
    def ops(self) -> float:
        return self.flops + self.bops / 64.0

    @property
    def memory_bits(self) -> int:
        return self.params_binary + 32 * self.params_real

    def to_json(self, per_layer: bool = False) -> dict[str, Any]:
        out = {
            "model": self.model,
            "input_size": list(self.input_size),
            "policy": self.policy,
            "policy_description": POLICIES[self.policy],
            "params_total": self.params_total,
            "params_binary": self.params_binary,
            "params_real": self.params_real,
            "memory_bits": self.memory_bits,
            "memory_mbit": self.memory_bits / 1e6,
            "bops": self.bops,
            "flops": self.flops,
            "ops": self.ops,
            "audit": self.audit,
        }
        if per_layer:
            out["layers"] = [asdict(lc) for lc in self.layers]
        return out


def _is_binary(m: nn.Module) -> bool:
    return isinstance(m, BinaryConv2d) and m.binary_input and m.binary_weight


def _declared(q: nn.Module | None) -> Quantizer | None:
    return q if isinstance(q, Quantizer) else None


def _planes(q: nn.Module | None) -> int:
    """The binary planes a quantizer declares (1 for a module that declares nothing)."""
    d = _declared(q)
    return 1 if d is None else d.planes


def _alphabet(q: nn.Module | None) -> tuple[float, ...]:
    d = _declared(q)
    return (-1.0, 1.0) if d is None else d.alphabet


@torch.no_grad()
def profile_model(
    model: nn.Module, input_size: tuple[int, int, int], policy: str = DEFAULT_POLICY, name: str = ""
) -> Profile:
    """Count costs with hooks on one forward pass of a copy of `model` (in eval mode, batch 1).

    The input is a fixed-seed standard-normal tensor: only shapes matter for the counts, and the audit checks that
    every binary conv's quantised input is exactly +/-1 whatever the input.

    Raises:
        ValueError: unknown policy.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown cost policy '{policy}'; expected one of {', '.join(POLICIES)}")
    model = copy.deepcopy(model).cpu().float().eval()  # XNOR weight centring mutates latent weights: use a copy
    layers: list[LayerCost] = []
    handles = []
    checks: dict[str, tuple[bool, int]] = {}

    def conv_hook(mod_name: str):
        def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            x = inp[0]
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                macs = kh * kw * (m.in_channels // m.groups) * out.shape[1] * out.shape[2] * out.shape[3]
                kind = "conv"
            else:
                lin = cast(nn.Linear, m)
                macs = lin.in_features * lin.out_features * (x.numel() // x.shape[-1])
                kind = "linear"
            binary = _is_binary(m)
            if binary:
                conv = cast(BinaryConv2d, m)
                macs *= _planes(conv.input_quantizer) * _planes(conv.weight_quantizer)
            if policy == "all_conv_binary":
                bops, flops = (macs, 0) if kind == "conv" else (0, macs)
            elif policy == "binary_weights":
                wbin = isinstance(m, BinaryConv2d) and m.binary_weight
                bops, flops = (macs, 0) if wbin else (0, macs)
            else:
                bops, flops = (macs, 0) if binary else (0, macs)
                if policy == "bireal_scales" and binary and getattr(m, "scale", None) is not None:
                    flops += out.numel()
            p_lat = m.weight.numel() if isinstance(m, BinaryConv2d) and m.binary_weight else 0
            p_all = sum(p.numel() for p in m.parameters(recurse=False))
            p_bin = p_lat * _planes(m.weight_quantizer) if isinstance(m, BinaryConv2d) else 0
            layers.append(
                LayerCost(
                    mod_name,
                    kind,
                    tuple(x.shape[1:]),
                    tuple(out.shape[1:]),
                    binary,
                    macs,
                    bops,
                    flops,
                    p_all - p_lat,
                    p_bin,
                    m.pad_value if isinstance(m, BinaryConv2d) else None,
                    alphabet=_alphabet(m.input_quantizer) if binary and isinstance(m, BinaryConv2d) else None,
                )
            )

        return hook

    def quant_hook(mod_name: str):
        def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            allowed = torch.tensor(_alphabet(m), dtype=out.dtype)
            ok = bool(torch.isin(out, allowed).all())
            checks[mod_name] = (ok, int((out == 0).sum()))

        return hook

    for n, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(conv_hook(n)))
            if isinstance(m, BinaryConv2d) and m.input_quantizer is not None:
                handles.append(m.input_quantizer.register_forward_hook(quant_hook(n)))
    g = torch.Generator().manual_seed(0)
    try:
        model(torch.randn(1, *input_size, generator=g))
    finally:
        for h in handles:
            h.remove()
    for lc in layers:
        if lc.name in checks:
            lc.input_values_ok, lc.input_zeros = checks[lc.name]
    p_total = sum(p.numel() for p in model.parameters())
    p_bin = sum(lc.params_binary for lc in _unique(layers))  # binary weight values (latent x planes)
    p_latent = sum(m.weight.numel() for m in model.modules() if isinstance(m, BinaryConv2d) and m.binary_weight)
    bad = [lc.name for lc in layers if lc.binary and lc.input_values_ok is False]
    border_zeros = [lc.name for lc in layers if lc.binary and lc.pad_value == 0.0 and _pads(model, lc.name)]
    audit = {
        "real_layers": [f"{lc.name} ({lc.kind})" for lc in _unique(layers) if not lc.binary],
        "binary_layers": sum(1 for lc in _unique(layers) if lc.binary),
        "binary_inputs_in_alphabet": not bad,
        "alphabets": sorted({_fmt_alphabet(lc.alphabet) for lc in _unique(layers) if lc.alphabet is not None}),
        "non_binary_inputs": bad,
        "zero_padded_binary_convs": len(border_zeros),
    }
    return Profile(
        name or type(model).__name__,
        input_size,
        policy,
        layers,
        p_total,
        p_bin,
        p_total - p_latent,
        sum(lc.bops for lc in layers),
        sum(lc.flops for lc in layers),
        audit,
    )


def _unique(layers: list[LayerCost]) -> list[LayerCost]:
    """One entry per module (a module called twice is counted twice for MACs but once for params)."""
    seen: dict[str, LayerCost] = {}
    for lc in layers:
        seen.setdefault(lc.name, lc)
    return list(seen.values())


def _pads(model: nn.Module, name: str) -> bool:
    m = model.get_submodule(name)
    return isinstance(m, nn.Conv2d) and any(p > 0 for p in (m.padding if isinstance(m.padding, tuple) else (1,)))


def _fmt_alphabet(a: tuple[float, ...]) -> str:
    return "{" + ", ".join(f"{v:+g}" if v else "0" for v in a) + "}"


def _fmt(n: float) -> str:
    if n == 0:
        return "0"
    e = int(math.floor(math.log10(abs(n))))
    return f"{n / 10**e:.2f}e{e}" if abs(e) >= 4 else f"{n:,.0f}"


def format_profile(p: Profile, per_layer: bool = True) -> str:
    """A larq-summary-like table: per layer, then totals, the policy and the audit."""
    lines = []
    if per_layer:
        hdr = (
            f"{'layer':<28} {'kind':<6} {'binary':<6} {'output':<16} {'real par':>10} {'bin par':>10} "
            f"{'FLOPs':>10} {'BOPs':>10}"
        )
        lines += [hdr, "-" * len(hdr)]
        for lc in p.layers:
            lines.append(
                f"{lc.name[:28]:<28} {lc.kind:<6} {'yes' if lc.binary else 'no':<6} "
                f"{'x'.join(map(str, lc.out_shape)):<16} {lc.params_real:>10,} {lc.params_binary:>10,} "
                f"{_fmt(lc.flops):>10} {_fmt(lc.bops):>10}"
            )
        lines.append("-" * len(hdr))
    lines += [
        f"model {p.model}, input {'x'.join(map(str, p.input_size))}, policy '{p.policy}': {POLICIES[p.policy]}",
        f"params: {p.params_total:,} total = {p.params_binary:,} binary + {p.params_real:,} real; "
        f"memory {p.memory_bits / 1e6:.2f} Mbit ({p.memory_bits / 8 / 2**20:.2f} MiB)",
        f"BOPs {_fmt(p.bops)}  FLOPs {_fmt(p.flops)}  OPs = FLOPs + BOPs/64 = {_fmt(p.ops)}",
        f"audit: {p.audit['binary_layers']} binary conv/linear layers; binary inputs in their alphabet "
        f"({' '.join(p.audit['alphabets']) or 'none'}): "
        f"{'yes' if p.audit['binary_inputs_in_alphabet'] else 'NO: ' + ', '.join(p.audit['non_binary_inputs'])}; "
        f"{p.audit['zero_padded_binary_convs']} binary convs pad their input with 0",
        "real (not binary) layers: " + ", ".join(p.audit["real_layers"]),
    ]
    return "\n".join(lines)
