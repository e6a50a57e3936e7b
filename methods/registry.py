"""Registries of `methods/`: search procedures (`@register_searcher`, `create_searcher`; models use timm's registry)
and what the result tables say about each model (`@described_by`, `method_info`).

Also the keyword-argument check every model registered by `methods/` runs first: `check_model_kwargs` raises
`ModelKwargError` for a keyword the model does not take (a typo, or another family's option), instead of swallowing it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "MethodInfo",
    "described_by",
    "describe_models",
    "method_info",
    "register_searcher",
    "create_searcher",
    "list_searchers",
    "ModelKwargError",
    "TIMM_ENTRYPOINT_KWARGS",
    "TIMM_FEATURE_KWARGS",
    "constructor_kwargs",
    "check_model_kwargs",
]

# What `timm.create_model` itself passes to every entrypoint (pretrained_model_args: models sourced from the HF hub or
# a local folder); `build_model_with_cfg` consumes them, so a model accepts them without listing them.
TIMM_ENTRYPOINT_KWARGS = frozenset({"pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained_model_args"})
# `build_model_with_cfg`'s feature-extraction wrapper: only for models with a `feature_info` (the ResNets).
TIMM_FEATURE_KWARGS = frozenset({"features_only", "out_indices", "feature_cls"})


class ModelKwargError(TypeError):
    """A registered model was given a keyword argument it does not take.

    Attributes:
        model: the model name; key: the refused keyword; accepted: the keywords it takes (sorted, without timm's
        plumbing); close: the accepted keywords closest to `key` (difflib).
    """

    def __init__(self, model: str, key: str, accepted: Iterable[str]) -> None:
        self.model, self.key = model, key
        self.accepted = tuple(sorted(accepted))
        self.close = tuple(difflib.get_close_matches(key, self.accepted, n=3))
        hint = f"; did you mean {', '.join(self.close)}?" if self.close else ""
        super().__init__(f"model '{model}' does not take keyword '{key}'; it takes: {', '.join(self.accepted)}{hint}")


def constructor_kwargs(cls: Callable[..., Any], exclude: Iterable[str] = ()) -> frozenset[str]:
    """The named keyword parameters of `cls` (its `__init__` for a class), less `exclude` (those a factory sets)."""
    params = inspect.signature(cls).parameters.values()
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return frozenset(named - set(exclude))


def check_model_kwargs(model: str, kwargs: Mapping[str, Any], accepted: Iterable[str], features: bool = False) -> None:
    """Refuse a keyword of `kwargs` that is neither in `accepted` nor timm's plumbing (`features`: its feature keys).

    Raises:
        ModelKwargError: names the model, the first unknown keyword and the accepted ones.
    """
    allowed = set(accepted)
    plumbing = TIMM_ENTRYPOINT_KWARGS | (TIMM_FEATURE_KWARGS if features else frozenset())
    for key in kwargs:
        if key not in allowed and key not in plumbing:
            raise ModelKwargError(model, key, allowed)


_SEARCHERS: dict[str, Callable[..., Any]] = {}


def register_searcher(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register a searcher factory under its function name (an error on duplicates)."""
    if fn.__name__ in _SEARCHERS:
        raise ValueError(f"searcher '{fn.__name__}' registered twice")
    _SEARCHERS[fn.__name__] = fn
    return fn


def list_searchers() -> list[str]:
    """Registered searcher names."""
    return sorted(_SEARCHERS)


def create_searcher(name: str, **kwargs: Any) -> Any:
    """Build a registered searcher.

    Raises:
        ValueError: unknown name.
    """
    if name not in _SEARCHERS:
        raise ValueError(f"unknown searcher '{name}'; expected one of {', '.join(list_searchers())}")
    return _SEARCHERS[name](**kwargs)


@dataclass(frozen=True)
class MethodInfo:
    """What the result tables say about a model: the method's name, its binarisation scheme (as the BNAS table words
    it), its paper, and whether its recipe starts from pretrained weights."""

    method: str
    scheme: str
    paper: str
    pretraining: bool = False


_METHOD_INFO: dict[str, MethodInfo] = {}
F = TypeVar("F", bound=Callable[..., Any])


def describe_models(names: Iterable[str], info: MethodInfo) -> None:
    """Attach `info` to the registered models `names` (e.g. a timm model this package does not define)."""
    for name in names:
        if name in _METHOD_INFO and _METHOD_INFO[name] != info:
            raise ValueError(f"model '{name}' described twice")
        _METHOD_INFO[name] = info


def described_by(info: MethodInfo) -> Callable[[F], F]:
    """Decorator for a model entrypoint (under timm's `@register_model`): the tables describe its rows with `info`."""

    def wrap(fn: F) -> F:
        describe_models([fn.__name__], info)
        return fn

    return wrap


def method_info(model: str) -> MethodInfo | None:
    """The description of registered model `model`, None when its family gave none."""
    return _METHOD_INFO.get(model)
