"""BinaryDuo's quantizers and its exact coupled -> decoupled conversion.

Kim, Kim, Kim, Kim, "BinaryDuo: Reducing Gradient Mismatch in Binary Activation Network by Coupling Binary
Activations", ICLR 2020, arXiv 2002.06517; details as the official release (Hyungjun-K1m/BinaryDuo, Torch7) has them.

- Activations: a = clamp(x, 0, 1), q = floor(a n + 0.5) / n with n = levels - 1: ternary {0, 1/2, 1} in the coupled
  network, binary {0, 1} (q = 1[a >= 0.5]) in the decoupled one. Gradient: 1 on 0 < x < 1 (straight-through the
  rounding, times the clamp's mask).
- Weights: s sign(W) with ONE scale per layer, s = mean |W| over the whole tensor (a constant for the gradient), and
  a plain straight-through gradient dL/dW = dL/dW_b (no clip mask).
- Decoupling: 1[x - 1/4 >= 1/2] + 1[x + 1/4 >= 1/2] = 2 ternary(x) for every x, so a conv over a ternary input equals
  a conv over two binary copies of the input, offset by -1/4 and +1/4, with the weights [W/2, W/2]; binarised, those
  are [W_b/2, W_b/2] (the per-layer scale halves with them). :func:`decouple` does this to every ternary-input conv:
  the decoupled network computes the coupled one's logits (to float rounding), then both halves fine-tune apart.
  The release replicates each quantizer's input tensor and duplicates the BN in front of it, folding the offsets
  into the copies' BN biases; here :class:`PairSplit` gives each copy its own per-channel affine (initialised to
  1 and -+1/4), which is the same function where a BN feeds the quantizer. Where the residual stream feeds it, the
  release's stream itself carries both copies (they drift apart in fine-tuning); here one stream feeds both.
"""

from __future__ import annotations

import torch
from torch import nn

from methods.binary.layers import BinaryConv2d
from methods.binary.quantizers import Quantizer, binary_sign

__all__ = ["LayerScaleSign", "PairSplit", "UniformActivation", "decouple"]


class _Uniform(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, n: int) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.floor(x.clamp(0.0, 1.0) * n + 0.5) / n

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g * ((x > 0) & (x < 1)).to(g.dtype), None


class UniformActivation(Quantizer):
    """BinaryDuo's activation quantizer on [0, 1]: `levels` = 3 (ternary, the coupled network; counted as the two
    binary planes it decouples into) or 2 (binary {0, 1})."""

    def __init__(self, levels: int = 2) -> None:
        super().__init__()
        if levels not in (2, 3):
            raise ValueError(f"BinaryDuo activation levels must be 2 or 3, got {levels}")
        self.levels = levels
        self.alphabet = (0.0, 1.0) if levels == 2 else (0.0, 0.5, 1.0)
        self.planes = levels - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Uniform.apply(x, self.levels - 1)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


class _LayerScaleSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return w.abs().mean() * binary_sign(w)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return g


class LayerScaleSign(Quantizer):
    """BinaryDuo's weights: s sign(W), s = mean |W| of the layer (constant for the gradient), straight-through
    gradient. One scale per layer is +-s per filter too (`scaled_signs`)."""

    scaled_signs = True

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _LayerScaleSign.apply(w)


class PairSplit(Quantizer):
    """The decoupled quantizer: x (C channels) -> [x a_1 + b_1, x a_2 + b_2] (2C channels) -> 1[clamp(., 0, 1) >= 0.5]
    (values {0, 1}); a initialised to 1, b to -1/4 and +1/4 (then 2 ternary(x) = the sum of the two copies)."""

    alphabet = (0.0, 1.0)

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(2, channels))
        self.shift = nn.Parameter(torch.tensor([-0.25, 0.25]).repeat_interleave(channels).view(2, channels))
        self.binary = UniformActivation(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.scale.to(x.dtype).view(2, 1, -1, 1, 1)
        b = self.shift.to(x.dtype).view(2, 1, -1, 1, 1)
        return self.binary(torch.cat((x * a[0] + b[0], x * a[1] + b[1]), dim=1))

    def extra_repr(self) -> str:
        return f"channels={self.scale.shape[1]}"


@torch.no_grad()
def decouple(model: nn.Module) -> nn.Module:
    """Turn every conv with a ternary input (UniformActivation(3)) into the equal conv over two binary copies of its
    input (module docstring), in place; returns `model`. Its other layers are untouched.

    Raises:
        ValueError: the model has no ternary-input conv (it is not a coupled BinaryDuo network).
    """
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, BinaryConv2d)
        and isinstance(m.input_quantizer, UniformActivation)
        and m.input_quantizer.levels == 3
    ]
    if not targets:
        raise ValueError("decouple: the model has no ternary-input conv (not a coupled BinaryDuo network)")
    for name, m in targets:
        if m.groups != 1:
            raise ValueError(f"decouple: {name} is a grouped conv (groups={m.groups}); only dense convs decouple")
        new = BinaryConv2d(
            2 * m.in_channels,
            m.out_channels,
            m.kernel_size,  # type: ignore[arg-type]
            m.stride,  # type: ignore[arg-type]
            m.padding,  # type: ignore[arg-type]
            m.dilation,  # type: ignore[arg-type]
            bias=m.bias is not None,
            input_quantizer=PairSplit(m.in_channels),
            weight_quantizer=m.weight_quantizer,
            pad_value=m.pad_value,
        ).to(m.weight.device, m.weight.dtype)
        new.weight.copy_(torch.cat((m.weight / 2, m.weight / 2), dim=1))
        if m.bias is not None:
            new.bias.copy_(m.bias)  # type: ignore[union-attr]
        new.train(m.training)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return model
