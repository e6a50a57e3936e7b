"""Binary building blocks: quantizers, BinaryConv2d, learned scales and weight statistics."""

from methods.binary.layers import BinaryConv2d
from methods.binary.quantizers import (
    ApproxSign,
    MagnitudeAwareSign,
    QuantizerLike,
    SteSign,
    XnorWeight,
    binary_sign,
    get_quantizer,
    list_quantizers,
    register_quantizer,
)
from methods.binary.scaling import LearnedScale, ScaleShape
from methods.binary.stats import BinaryWeightStats

__all__ = [
    "ApproxSign",
    "BinaryConv2d",
    "BinaryWeightStats",
    "LearnedScale",
    "MagnitudeAwareSign",
    "QuantizerLike",
    "ScaleShape",
    "SteSign",
    "XnorWeight",
    "binary_sign",
    "get_quantizer",
    "list_quantizers",
    "register_quantizer",
]
