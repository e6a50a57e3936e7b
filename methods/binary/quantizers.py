"""Binary quantizers: each a small `nn.Module` around a custom-gradient function, addressable by a string alias.

Convention: sign(0) = +1 (`torch.sign(0) = 0` would make a network ternary). Every quantizer states its forward
formula, its gradient estimator and its paper. Weight quantizers take a conv weight of shape (C_out, C_in, kh, kw).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn

__all__ = [
    "Quantizer",
    "QuantizerLike",
    "binary_sign",
    "SteSign",
    "ApproxSign",
    "XnorWeight",
    "xnor_rescaled_weights",
    "schedule_xnor_prep",
    "MagnitudeAwareSign",
    "register_quantizer",
    "get_quantizer",
    "list_quantizers",
]


class Quantizer(nn.Module):
    """What every quantizer of this package declares about itself, so that a layer can ask instead of probing.

    Capabilities (class attributes; a subclass sets those that hold):
      - `bit_width`: bits per quantised value;
      - `signs_only`: the output is exactly +-1 (an input quantizer whose output an int8 conv can take as is);
      - `scaled_signs`: as a weight quantizer, +-alpha per output filter (an int8 conv computes alpha x an integer
        sum exactly);
      - `fuses_sign`: :meth:`sign_grad` gives the input gradient from the gradient w.r.t. sign(x), so a conv can fuse
        the sign into its int8 forward and keep only the input's 1-byte codes;
      - `alphabet`: the values an input quantizer's output takes (`bnas profile` audits every binary conv's input
        against it): +-1 for sign quantizers, {0, 1} for BinaryDuo's decoupled activations;
      - `planes`: binary planes per value, the multiplier of a binary conv's BOPs (and, for a weight quantizer, of its
        stored bits): M weight bases or N activation bases in ABC-Net, 2 for BinaryDuo's ternary activations
        (counted as the two binary ones they decouple into).
    """

    name: str = ""
    bit_width: int = 1
    alphabet: tuple[float, ...] = (-1.0, 1.0)
    planes: int = 1
    signs_only: bool = False
    scaled_signs: bool = False
    fuses_sign: bool = False

    def sign_grad(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The gradient w.r.t. x given g, the gradient w.r.t. sign(x) (only where `fuses_sign`)."""
        raise NotImplementedError(f"{type(self).__name__} does not fuse its sign into a conv")


QuantizerLike = str | nn.Module | None

_QUANTIZERS: dict[str, type[nn.Module]] = {}


def register_quantizer(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator registering a quantizer under `name` (an error on duplicates)."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _QUANTIZERS:
            raise ValueError(f"quantizer alias '{name}' registered twice")
        _QUANTIZERS[name] = cls
        setattr(cls, "name", name)  # noqa: B010  (a Quantizer declares `name`; a registered foreign module gets it)
        return cls

    return wrap


def list_quantizers() -> list[str]:
    """Registered quantizer aliases."""
    return sorted(_QUANTIZERS)


def get_quantizer(q: QuantizerLike) -> nn.Module | None:
    """Resolve None, an alias or a module to a quantizer module (None stays None).

    Raises:
        ValueError: unknown alias or unsupported type.
    """
    if q is None or isinstance(q, nn.Module):
        return q
    if isinstance(q, str):
        if q not in _QUANTIZERS:
            raise ValueError(f"unknown quantizer '{q}'; expected one of {', '.join(list_quantizers())}")
        return _QUANTIZERS[q]()
    raise ValueError(f"quantizer must be None, a string alias or an nn.Module, got {type(q).__name__}")


def binary_sign(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = sign(-0.0) = +1, in x's dtype (no gradient).

    One vectorised copysign (x + 0.0 turns -0.0 into +0.0): on CPU `torch.where(x >= 0, 1.0, -1.0)` was ~6x slower
    and was 10 % of a BNAS-A training step.
    """
    return torch.copysign(x.new_ones(()), x + 0.0)


@functools.cache
def _next_up(value: float, dtype: torch.dtype) -> float:
    """The smallest number of `dtype` above `value` (exactly representable in `dtype`)."""
    return float(torch.nextafter(torch.tensor(value, dtype=dtype), torch.tensor(float("inf"), dtype=dtype)))


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def ste_bounds(clip: float) -> dict[torch.dtype, float]:
    """Per floating dtype, the bound one ulp above `clip` that :func:`ste_mask_grad` takes (computed eagerly, once, so
    that torch.compile traces no scalar extraction)."""
    return {dt: _next_up(clip, dt) for dt in _FLOAT_DTYPES}


def ste_mask_grad(g: torch.Tensor, x: torch.Tensor, bound: float) -> torch.Tensor:
    """g where |x| <= clip, else 0, in one fused kernel: hardtanh's backward excludes its bounds, so it is called with
    `bound` = the next number of x's dtype above clip (see :func:`ste_bounds`), and |x| = clip passes, as BinaryNet's
    STE 1_{|x| <= 1}."""
    return torch.ops.aten.hardtanh_backward(g, x, -bound, bound)


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.bound = bound  # one ulp above the clip value (ste_bounds)
        return binary_sign(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return ste_mask_grad(g, x, ctx.bound), None


def approx_sign_grad(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bi-Real Net's sign gradient: g * max(0, 2 - 2|x|)."""
    return g * (2.0 - 2.0 * x.abs()).clamp_min(0.0)


class _ApproxSignFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return binary_sign(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return approx_sign_grad(g, x)


@register_quantizer("ste_sign")
class SteSign(Quantizer):
    """Sign with the hard-tanh straight-through estimator (BinaryNet).

    Forward: q = sign(x), sign(0) = +1. Backward: dq/dx = 1 if |x| <= clip_value else 0.

    Reference: Courbariaux, Hubara et al., "Binarized Neural Networks", NeurIPS 2016, arXiv 1602.02830.
    """

    signs_only = True  # outputs exactly +-1
    scaled_signs = True  # as a weight quantizer: +-alpha per output filter (alpha = 1)
    fuses_sign = True

    def __init__(self, clip_value: float = 1.0) -> None:
        super().__init__()
        self.clip_value = clip_value
        self._bounds = ste_bounds(clip_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SignSTE.apply(x, self._bounds[x.dtype])

    def sign_grad(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The gradient w.r.t. x given g, the gradient w.r.t. sign(x) (what this quantizer's backward computes)."""
        return ste_mask_grad(g, x, self._bounds[x.dtype])

    def extra_repr(self) -> str:
        return f"clip_value={self.clip_value}"


@register_quantizer("approx_sign")
class ApproxSign(Quantizer):
    """Sign with Bi-Real Net's piecewise-polynomial gradient.

    Forward: q = sign(x), sign(0) = +1. Backward: dq/dx = 2 - 2|x| for |x| < 1, else 0 (the derivative of
    F(x) = 2x + x^2 on [-1, 0), 2x - x^2 on [0, 1), -1/+1 outside).

    Reference: Liu et al., "Bi-Real Net", ECCV 2018, arXiv 1808.00278.
    """

    signs_only = True
    scaled_signs = True
    fuses_sign = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ApproxSignFn.apply(x)

    def sign_grad(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The gradient w.r.t. x given g, the gradient w.r.t. sign(x) (what this quantizer's backward computes)."""
        return approx_sign_grad(g, x)


GradMode = Literal["ste", "exact", "xnor_rescale"]


def _xnor_alpha(w: torch.Tensor) -> torch.Tensor:
    """XNOR-Net's per-output-filter scale mean |W| over (C_in, kh, kw), shape (C_out, 1, 1, 1)."""
    return w.abs().mean(dim=(1, 2, 3), keepdim=True)


def _xnor_rescale_factor(w: torch.Tensor) -> float:
    """XNOR-Net-PyTorch's gradient multiplier n * (1 - 1/C_in), n = C_in*kh*kw (`updateBinaryGradWeight`)."""
    return w[0].numel() * (1.0 - 1.0 / w.shape[1])


class _XnorWeightFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, mode: str, rows: torch.Tensor | None, owner: XnorWeight | None):  # type: ignore[override]
        alpha = _xnor_alpha(w)
        s = binary_sign(w)
        ctx.save_for_backward(w, s, alpha, rows)
        ctx.mode = mode
        ctx.owner = owner
        wb = alpha * s
        return wb if rows is None else torch.where(rows.view(-1, 1, 1, 1), wb, w)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:  # type: ignore[override]
        if ctx.owner is not None:
            ctx.owner._grad_seen = True  # a gradient reached the latent weights: the next forward preps them again
        w, s, alpha, rows = ctx.saved_tensors
        if ctx.mode == "ste":
            grad = g * (w.abs() <= 1.0).to(g.dtype)
        else:
            # d(alpha * sign(W))/dW with an identity STE on sign: alpha*g + sign(W) * mean_filter(sign(W) * g)
            grad = alpha * g + s * (s * g).mean(dim=(1, 2, 3), keepdim=True)
            if ctx.mode == "xnor_rescale":
                grad = grad * _xnor_rescale_factor(w)
        if rows is not None:
            grad = torch.where(rows.view(-1, 1, 1, 1), grad, g)
        return grad, None, None, None


@register_quantizer("xnor_weight")
class XnorWeight(Quantizer):
    """XNOR-Net weight binarisation: W_b = alpha * sign(W), alpha = mean |W| over each output filter (C_in*k*k).

    Before binarising, the latent weights may be mean-centred over the input-channel dimension and clamped to
    [-1, 1] **in place** (permanently; the "prep"), as XNOR-Net-PyTorch's and the BNAS release's `binarization()` do
    (docs/bnas.md §1.2). The release preps once per training iteration (before its first forward: in the search before
    both the architecture and the weight step) and once per evaluation pass (before the first batch). Centring after
    clamping is not idempotent (where the clamp fired, a second pass moves the weights again and may flip signs), so
    this module preps at a forward only when one of these happened since its last prep:
      - a gradient reached the latent weights through this quantizer (a backward pass: the weights are about to be,
        or were, updated; an arch-only `torch.autograd.grad` does not count),
      - the latent tensor changed in place or was replaced: its `_version` or `data_ptr()` differs from right after
        the last prep (an optimizer step, `load_state_dict`, `.to()`; torch's fused SGD/Adam steps do not bump
        `_version`, which the backward rule covers; writes through `.data` are not seen),
      - the train/eval mode changed (the release's evaluation pass starts with a prep, and so does the next
        training iteration),
      - :meth:`schedule_prep` was called (the training engine calls it before every iteration and evaluation pass,
        the BNAS searcher before every iteration), or it has never prepped.
    So two forwards without a weight change (the search's arch and weight steps, an evaluation pass's batches, the
    recomputation of activation checkpointing) prep once. The decision is made in Python at the forward: inside a
    captured CUDA graph it is baked in at capture, which for the BNAS search iteration is the release's pattern
    (prep in the first forward only). Under torch.compile (no Python decision at run time) it preps at every forward.

    Gradient (`grad`):
      - "ste": dL/dW = dL/dW_b * 1[|W| <= 1] (scale treated as a constant).
      - "exact": the derivative of alpha*sign(W) with an identity STE on sign:
        alpha * g + sign(W) * mean_filter(sign(W) * g).
      - "xnor_rescale": "exact" times n*(1 - 1/C_in), n = C_in*k*k: XNOR-Net-PyTorch's `updateBinaryGradWeight`,
        used by BNAS (docs/bnas.md §1.2). It is a large per-layer gradient multiplier (1296 for a 144-channel 3x3 conv).
        The release applies it after its gradient-norm clip (ImageNet), to the gradient w.r.t. W_b;
        :meth:`raw_grad` recovers that gradient from the rescaled one for a release-order clip
        (`harness.engine.clip_grad_norm_release_order`).

    `binary_rows`: an optional bool tensor over output filters; filters where it is False stay full precision (not
    centred, clamped or binarised; plain gradient). Used to keep a grouped weight tensor equal to separate convs of
    which some are FP (the release's BinOp index bug, docs/bnas.md §8.1).

    Reference: Rastegari et al., "XNOR-Net", ECCV 2016, arXiv 1603.05279.
    """

    def __init__(self, center: bool = True, clamp: bool = True, grad: GradMode = "exact") -> None:
        super().__init__()
        if grad not in ("ste", "exact", "xnor_rescale"):
            raise ValueError(f"grad must be 'ste', 'exact' or 'xnor_rescale', got {grad!r}")
        self.center, self.clamp, self.grad = center, clamp, grad
        self.binary_rows: torch.Tensor | None = None
        self._prep_stamp: tuple[int, int, bool] | None = None  # (data_ptr, _version, training) after the last prep
        self._grad_seen = False  # a backward pass reached the latent weights since the last prep

    @property
    def scaled_signs(self) -> bool:  # type: ignore[override]  # per instance: False with FP `binary_rows`
        """Every output filter is +-alpha (no full-precision `binary_rows`)."""
        return self.binary_rows is None

    def schedule_prep(self) -> None:
        """Make the next forward centre and clamp the latent weights (a new iteration or evaluation pass)."""
        self._prep_stamp = None

    def prep_due(self, w: torch.Tensor) -> bool:
        """Whether a forward on the latent weights `w` would centre and clamp them now (see the class docstring)."""
        return (self.center or self.clamp) and (
            self._grad_seen or self._prep_stamp != (w.data_ptr(), w._version, self.training)
        )

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        rows = self.binary_rows
        if rows is not None and rows.device != w.device:
            rows = self.binary_rows = rows.to(w.device)
        compiling = torch.compiler.is_compiling()
        if (self.center or self.clamp) and (compiling or self.prep_due(w)):
            with torch.no_grad():
                # in place on the binarised filters (all, or the `binary_rows` ones): no copy in the common case
                v = w if rows is None else w[rows]
                if self.center:
                    v.sub_(v.mean(dim=1, keepdim=True))
                if self.clamp:
                    v.clamp_(-1.0, 1.0)
                if rows is not None:
                    w[rows] = v
            if not compiling:
                self._prep_stamp = (w.data_ptr(), w._version, self.training)
                self._grad_seen = False
        return _XnorWeightFn.apply(w, self.grad, rows, None if compiling else self)

    @torch.no_grad()
    def raw_grad(self, w: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """For `grad="xnor_rescale"`: the gradient w.r.t. the binarised weight W_b = alpha*sign(W) (what the release's
        gradient clip sees) from `grad`, the gradient this quantizer's backward gave the latent weights `w` (as they
        were at the forward). Other modes: `grad` unchanged.

        Per filter the rescale is G = c * (alpha*g + s * mean(s*g)), s = sign(W), c = n*(1 - 1/C_in): the linear map
        c*(alpha*I + s s^T/n), inverted exactly (Sherman-Morrison): g = (G - s * mean(s*G) / (alpha + 1)) / (c*alpha).
        A filter with alpha = 0 (all-zero latent weights) takes the minimum-norm g = G / c. Being linear, the inverse
        applies to a gradient averaged over DDP ranks and to an unscaled fp16 gradient alike. It assumes the latent
        weights get their gradient only through this quantizer (as a BinaryConv2d's do).
        """
        if self.grad != "xnor_rescale" or grad is None:
            return grad
        c = _xnor_rescale_factor(w)
        if c == 0.0:  # C_in = 1: the rescale zeroes the gradient, there is nothing to recover
            return grad
        alpha = _xnor_alpha(w).to(grad.dtype)
        s = binary_sign(w).to(grad.dtype)
        m = (s * grad).mean(dim=(1, 2, 3), keepdim=True)
        pos = alpha > 0
        raw = torch.where(pos, (grad - s * (m / (alpha + 1.0))) / (c * torch.where(pos, alpha, 1.0)), grad / c)
        rows = self.binary_rows
        if rows is not None:
            raw = torch.where(rows.to(grad.device).view(-1, 1, 1, 1), raw, grad)
        return raw

    def extra_repr(self) -> str:
        return f"center={self.center}, clamp={self.clamp}, grad={self.grad}"


def xnor_rescaled_weights(model: nn.Module) -> list[tuple[torch.Tensor, XnorWeight]]:
    """(latent weight, quantizer) for every module of `model` whose `weight_quantizer` is an :class:`XnorWeight` with
    `grad="xnor_rescale"` (a BinaryConv2d's): the parameters whose `.grad` is the rescaled gradient, not dL/dW_b."""
    out = []
    for m in model.modules():
        q = getattr(m, "weight_quantizer", None)
        w = getattr(m, "weight", None)
        if isinstance(q, XnorWeight) and q.grad == "xnor_rescale" and isinstance(w, torch.Tensor):
            out.append((w, q))
    return out


def schedule_xnor_prep(target: nn.Module | Iterable[XnorWeight]) -> None:
    """:meth:`XnorWeight.schedule_prep` on every XnorWeight of a model (or of a list collected once, for loops)."""
    qs = (m for m in target.modules() if isinstance(m, XnorWeight)) if isinstance(target, nn.Module) else target
    for q in qs:
        q.schedule_prep()


class _MagnitudeAwareFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, paper: bool) -> torch.Tensor:  # type: ignore[override]
        alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
        ctx.save_for_backward(w, alpha)
        ctx.paper = paper
        return alpha * binary_sign(w)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        w, alpha = ctx.saved_tensors
        mask = (w.abs() < 1.0).to(g.dtype)
        return (g * alpha * mask if ctx.paper else g * mask), None


@register_quantizer("magnitude_aware_sign")
class MagnitudeAwareSign(Quantizer):
    """Bi-Real Net's magnitude-aware weights: W_b = (||W||_1 / n) * sign(W) per output filter (n = C_in*k*k).

    Backward (`variant`):
      - "release" (default, the Bi-Real PyTorch release): the scale is detached and the gradient passes through
        clip(W, -1, 1): dL/dW = dL/dW_b * 1[|W| < 1].
      - "paper": the gradient is also scaled by the magnitude: dL/dW = dL/dW_b * (||W||_1 / n) * 1[|W| < 1].

    Reference: Liu et al., "Bi-Real Net", ECCV 2018, arXiv 1808.00278.
    """

    scaled_signs = True  # +-alpha per output filter

    def __init__(self, variant: Literal["release", "paper"] = "release") -> None:
        super().__init__()
        if variant not in ("release", "paper"):
            raise ValueError(f"variant must be 'release' or 'paper', got {variant!r}")
        self.variant = variant

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _MagnitudeAwareFn.apply(w, self.variant == "paper")

    def extra_repr(self) -> str:
        return f"variant={self.variant}"
