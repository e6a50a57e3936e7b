"""Registry of search procedures (models use timm's registry): `@register_searcher`, `create_searcher`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["register_searcher", "create_searcher", "list_searchers"]

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
