"""`bnas exp`: DVC's experiments as one row per run, readable in a 120-column terminal.

`dvc exp show` makes one column per (metrics file, metric): with every run folder of both pipelines that is over 700
columns, each cell printed as `…`. This module reads the same records (`dvc.api.exp_show`) and pivots them to one row
per (experiment, run folder): experiment, profile, kind (train or search), run folder, seed, top-1 and OPs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ExpRow", "exp_rows", "format_exp_rows"]

# <runs root>/<dataset>/<run folder>/seed<N>/metrics.json:<metric>
_KEY = re.compile(
    r"^(?P<root>(?:.*/)?runs(?:/(?P<profile>[^/]+))?)/(?P<dataset>cifar10|imagenet)/(?P<folder>[^/]+)/"
    r"seed(?P<seed>\d+)/metrics\.json:(?P<metric>.+)$"
)
_PROFILE_ROOTS = {"small"}  # runs/<name>/ holds that profile's pipeline (pipelines/<name>/dvc.yaml)


@dataclass(frozen=True)
class ExpRow:
    """One run of one experiment (DVC workspace, a commit or a queued/finished `dvc exp run`)."""

    experiment: str
    profile: str
    dataset: str
    kind: str
    folder: str
    seed: int
    top1: float
    ops_1e8: float


def _name(record: Mapping[str, Any]) -> str:
    name = record.get("Experiment") or record.get("rev") or "?"
    return str(name)


def exp_rows(records: Iterable[Mapping[str, Any]]) -> list[ExpRow]:
    """Pivot `dvc.api.exp_show()` records (flat dicts "path:metric" -> value, params by name) to one row per run
    folder that has a top-1: `val/top1` of a training run, `search/val_top1` (supernet) of a search."""
    rows: list[ExpRow] = []
    for rec in records:
        runs: dict[tuple[str, str, str, int], dict[str, Any]] = {}
        for key, value in rec.items():
            m = _KEY.match(str(key))
            if m is None or value is None:
                continue
            profile = m["profile"] if m["profile"] in _PROFILE_ROOTS else str(rec.get("profile") or "?")
            runs.setdefault((profile, m["dataset"], m["folder"], int(m["seed"])), {})[m["metric"]] = value
        for (profile, dataset, folder, seed), metrics in sorted(runs.items()):
            search = "search/val_top1" in metrics
            top1 = metrics.get("search/val_top1" if search else "val/top1")
            if top1 is None:
                continue
            ops = metrics.get("cost/ops")
            rows.append(
                ExpRow(
                    experiment=_name(rec),
                    profile=profile,
                    dataset=dataset,
                    kind="search" if search else "train",
                    folder=folder,
                    seed=seed,
                    top1=float(top1),
                    ops_1e8=float(ops) / 1e8 if ops is not None else math.nan,
                )
            )
    return rows


def format_exp_rows(rows: list[ExpRow], width: int = 120) -> str:
    """A fixed-width text table of `rows`, no line longer than `width` (long names are cut with '…')."""
    header = ("experiment", "profile", "dataset", "kind", "run folder", "seed", "top-1", "OPs 1e8")
    cells = [
        (
            r.experiment,
            r.profile,
            r.dataset,
            r.kind,
            r.folder,
            str(r.seed),
            f"{r.top1:.2f}",
            "—" if math.isnan(r.ops_1e8) else f"{r.ops_1e8:.4f}",
        )
        for r in rows
    ]
    limits = [20, 8, 8, 6, 28, 4, 6, 8]
    widths = [
        min(lim, max([len(h)] + [len(c[i]) for c in cells]))
        for i, (h, lim) in enumerate(zip(header, limits, strict=True))
    ]

    def line(values: tuple[str, ...]) -> str:
        parts = []
        for i, (v, w) in enumerate(zip(values, widths, strict=True)):
            v = v if len(v) <= w else v[: w - 1] + "…"
            parts.append(v.rjust(w) if i >= 5 else v.ljust(w))
        return "  ".join(parts).rstrip()[:width]

    out = [line(header), line(tuple("-" * w for w in widths))]
    out += [line(c) for c in cells]
    return "\n".join(out) + "\n"
