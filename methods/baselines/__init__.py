"""Baseline networks, one family per file: every module here (but the `_`-private helpers) is imported, and each
import registers that family's models with timm and describes them for the tables (`methods.registry`). Adding a
baseline is adding its file (docs/adding_a_method.md)."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
