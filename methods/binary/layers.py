"""`BinaryConv2d`: `nn.Conv2d` plus an input quantizer, a weight quantizer and an optional output scale.

With no quantizers and no scale it is exactly `nn.Conv2d`. Padding is explicit: a binary conv's input is padded with
`pad_value` *after* quantisation, so the border is 0 (a third value: the layer is then not strictly binary at the
border, as in most PyTorch releases) or +1 (strictly binary, larq's `pad_values=1.0`).

On CPU in float32, a conv whose input quantizer gives exactly +-1 (`signs_only`) and whose weight quantizer gives
+-alpha per output filter (`scaled_signs`) runs its forward as an exact int8 conv (:mod:`methods.binary.int8_conv`).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from methods.binary.int8_conv import int8_binary_conv2d, int8_conv_enabled, int8_sign_conv2d
from methods.binary.quantizers import Quantizer, QuantizerLike, get_quantizer

__all__ = ["BinaryConv2d"]


class BinaryConv2d(nn.Conv2d):
    """A conv whose input and weight go through quantizers, optionally followed by a learned scale.

    Args:
        input_quantizer: applied to the input (e.g. "ste_sign", "approx_sign"); None keeps it real.
        weight_quantizer: applied to the latent weight (e.g. "ste_sign", "xnor_weight"); None keeps it real.
        scale: a module applied to the conv output (e.g. XNOR-Net++'s LearnedScale); None for none.
        pad_value: value the quantised input is padded with (0.0 or 1.0).
        weight_clip: if set, :meth:`constrain` clips the latent weights to [-weight_clip, weight_clip] (BinaryNet's
            latent-weight clipping; the training engine calls it after every optimizer step).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        *,
        input_quantizer: QuantizerLike = None,
        weight_quantizer: QuantizerLike = None,
        scale: nn.Module | None = None,
        pad_value: float = 0.0,
        weight_clip: float | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        if pad_value not in (0.0, 1.0):
            raise ValueError(f"pad_value must be 0.0 or 1.0, got {pad_value}")
        self.input_quantizer = get_quantizer(input_quantizer)
        self.weight_quantizer = get_quantizer(weight_quantizer)
        self.scale = scale
        self.pad_value = pad_value
        self.weight_clip = weight_clip

    @torch.no_grad()
    def constrain(self) -> None:
        """Apply the latent-weight constraint (if any) after an optimizer step."""
        if self.weight_clip is not None:
            self.weight.clamp_(-self.weight_clip, self.weight_clip)

    @property
    def _pad(self) -> tuple[int, int]:
        """The padding (BinaryConv2d takes ints only: nn.Conv2d stores them as a pair)."""
        return cast(tuple[int, int], self.padding)

    @property
    def binary_input(self) -> bool:
        return self.input_quantizer is not None

    @property
    def binary_weight(self) -> bool:
        return self.weight_quantizer is not None

    def _int8_ok(self, x: torch.Tensor) -> bool:
        """Whether the int8 forward applies to this conv for a +-1 input like x."""
        return (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.groups == 1
            and self.bias is None
            and self.pad_value == 0.0
            and isinstance(self.weight_quantizer, Quantizer)
            and self.weight_quantizer.scaled_signs
            and int8_conv_enabled()
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()
        )

    def forward(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """The conv's output (then a ReLU if `relu`: in place on the conv's output, which its backward does not need;
        fused into the int8 forward where that runs)."""
        if self.input_quantizer is None:
            return self._conv(x, relu, int8=False)
        q = self.input_quantizer
        caps = q if isinstance(q, Quantizer) else None  # a foreign module declares nothing: the plain path
        int8 = caps is not None and caps.signs_only and self._int8_ok(x)
        if int8 and caps is not None and caps.fuses_sign and self.scale is None:  # the sign fused into the int8 conv
            w = self.quantized_weight()
            return int8_sign_conv2d(x, w, caps.sign_grad, self.stride, self._pad, self.dilation, relu)
        return self._conv(self.input_quantizer(x), relu, int8)

    def forward_signs(self, xb: torch.Tensor, relu: bool = False, any_layout: bool = False) -> torch.Tensor:
        """As :meth:`forward` for an input the caller has already binarised to exactly +-1, skipping the input
        quantizer (the BNAS search computes one sign per input state for all its convs). With `any_layout` the int8
        forward's output stays channels_last (same values; saves a copy where the caller does not care)."""
        return self._conv(xb, relu, self._int8_ok(xb), any_layout)

    def latent_weight(self) -> torch.Tensor:
        """The real-valued (C_out, C_in / groups, kh, kw) kernel the weight quantizer binarises: the stored `weight`
        here; a subclass that stores its kernel in another form (CBCN's circulant filters) expands it."""
        return self.weight

    def quantized_weight(self) -> torch.Tensor:
        """The kernel the conv applies: the latent weight through the weight quantizer (if any)."""
        w = self.latent_weight()
        return w if self.weight_quantizer is None else self.weight_quantizer(w)

    def _conv(self, x: torch.Tensor, relu: bool, int8: bool, any_layout: bool = False) -> torch.Tensor:
        plain = type(self).latent_weight is BinaryConv2d.latent_weight
        if plain and self.weight_quantizer is None and self.scale is None and self.pad_value == 0.0:
            y = super().forward(x)
            return F.relu_(y) if relu else y
        w = self.quantized_weight()
        if int8:
            fuse = relu and self.scale is None
            y = int8_binary_conv2d(x, w, self.stride, self._pad, self.dilation, fuse, any_layout)
            if self.scale is None:
                return y
            y = self.scale(y)
            return F.relu_(y) if relu else y
        ph, pw = self._pad
        if self.pad_value != 0.0 and (ph or pw):
            x = F.pad(x, (pw, pw, ph, ph), value=self.pad_value)
            y = F.conv2d(x, w, self.bias, self.stride, 0, self.dilation, self.groups)
        else:
            y = F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.scale is not None:
            y = self.scale(y)
        return F.relu_(y) if relu else y

    def extra_repr(self) -> str:
        clip = f", weight_clip={self.weight_clip}" if self.weight_clip is not None else ""
        return super().extra_repr() + f", pad_value={self.pad_value}{clip}"
