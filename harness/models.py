"""Model creation: every network is a timm model; importing `methods` registers ours."""

from __future__ import annotations

import difflib
from typing import Any

import timm
from torch import nn

import methods  # noqa: F401  (registers models)
from harness.errors import BnasError
from methods.registry import ModelKwargError

__all__ = ["create_model", "count_params"]


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """`timm.create_model(name, num_classes=...)` after registering our methods.

    Raises:
        BnasError: `name` is not a registered model (the message lists close matches), or the model does not take
            one of `kwargs` (the message names the keyword and lists the ones it takes).
    """
    if not timm.is_model(name):
        names = timm.list_models()
        close = difflib.get_close_matches(name, names, n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise BnasError(f"unknown model '{name}' (train.model): expected a timm model name{hint}")
    try:
        return timm.create_model(name, num_classes=num_classes, pretrained=False, **kwargs)
    except ModelKwargError as e:
        hint = f"; did you mean {', '.join(e.close)}?" if e.close else ""
        raise BnasError(
            f"model '{e.model}' does not take keyword '{e.key}' (train.model_kwargs); it takes: {', '.join(e.accepted)}"
            f"{hint}"
        ) from None
    except TypeError as e:
        raise BnasError(f"model '{name}' does not take train.model_kwargs {kwargs} ({e})") from None
    except ValueError as e:  # e.g. a malformed genotype.json passed as model_kwargs.genotype
        raise BnasError(f"model '{name}': {e}") from None


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())
