"""What `dvc plots show` shows: long-format plot data written by `bnas tables`, and an offline page for DVC.

DVC plots one CSV column against another, one file per plot definition (dvc.yaml, top-level `plots:`); it cannot
split the tables' per-seed columns or read folders. So `bnas tables` also writes `<out>/plots/`:

- `curves.csv`: every training run's train loss, train top-1 and validation top-1 per epoch (validation only where
  it was measured: the profiles' `eval_interval`);
- `search_curves.csv`: every search's supernet validation top-1 and mean alpha entropy per epoch;
- `<table>_seeds.csv`: one row per (table row, seed) of the CIFAR-10, ablation and searches tables, and one per
  (claim side, seed) of the claims, for the side-by-side comparison plots.

Every file has the columns `name` (the line or group) and `seed`, which the templates in `.dvc/plots/` colour and
overlay by. DVC's own HTML page loads vega from a CDN; :func:`write_offline_template` writes a page template with
vega, vega-lite and vega-embed inlined (from the `vl-convert-python` package), which `make install` registers as
the checkout's `plots.html_template`, so the page renders with no network.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from harness.claims import Claim
from harness.errors import DataError
from harness.io import atomic_write_text, read_history
from harness.search_results import SEARCH_VARIANTS, SearchRun

__all__ = ["PLOT_FILES", "plot_rows", "write_plot_data", "write_offline_template"]

# file -> its columns (name and seed first: the templates colour by `name` and draw one line or dot per `seed`)
PLOT_FILES: dict[str, list[str]] = {
    "curves.csv": ["name", "seed", "epoch", "train_loss", "train_top1", "val_top1"],
    "search_curves.csv": ["name", "seed", "epoch", "supernet_val_top1", "alpha_entropy"],
    "cifar10_seeds.csv": ["name", "seed", "top1"],
    "ablation_seeds.csv": ["name", "seed", "top1"],
    "searches_seeds.csv": ["name", "seed", "supernet_val_top1", "alpha_entropy"],
    "claims_seeds.csv": ["name", "seed", "claim", "side", "value"],
}
# history.csv column -> plot column
_CURVE_COLUMNS = {"train/loss": "train_loss", "train/top1": "train_top1", "val/top1": "val_top1"}
_SEARCH_COLUMNS = {"val/top1": "supernet_val_top1", "alpha_entropy": "alpha_entropy"}


def _curves(base: Path, searches: bool) -> list[dict[str, Any]]:
    cols = _SEARCH_COLUMNS if searches else _CURVE_COLUMNS
    rows = []
    for mdir in sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith("search") == searches):
        for sdir in sorted(mdir.glob("seed*")):
            hfile = sdir / "history.csv"
            if not hfile.is_file() or not (sdir / "metrics.json").is_file():  # unfinished runs are not plotted
                continue
            seed = sdir.name.removeprefix("seed")
            for epoch, h in read_history(hfile).items():
                row: dict[str, Any] = {"name": mdir.name, "seed": seed, "epoch": epoch}
                # '' where the epoch did not measure it (no validation that epoch)
                row.update({new: "" if math.isnan(v := h.get(old, math.nan)) else v for old, new in cols.items()})
                rows.append(row)
    return rows


def plot_rows(
    runs_root: str | Path,
    cifar: Mapping[str, Any],
    searches: Mapping[str, list[SearchRun]],
    claims: Iterable[Claim],
    table_rows: Iterable[str],
    dataset: str = "cifar10",
) -> dict[str, list[dict[str, Any]]]:
    """The rows of every file of :data:`PLOT_FILES`. `cifar` maps method folders to their runs
    (:func:`harness.tables.collect_runs`), `table_rows` names the folders that are rows of the CIFAR-10 table."""
    base = Path(runs_root) / dataset
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in PLOT_FILES}
    if base.is_dir():
        out["curves.csv"] = _curves(base, searches=False)
        out["search_curves.csv"] = _curves(base, searches=True)
    for key in table_rows:
        r = cifar.get(key)
        if r is not None:
            out["cifar10_seeds.csv"] += [
                {"name": key, "seed": s, "top1": t} for s, t in zip(r.seeds, r.top1, strict=True)
            ]
    for column, (variant, retrain) in SEARCH_VARIANTS.items():
        r = cifar.get(retrain)
        if r is not None:
            out["ablation_seeds.csv"] += [
                {"name": column, "seed": s, "top1": t} for s, t in zip(r.seeds, r.top1, strict=True)
            ]
        for run in searches.get(variant, []):
            out["searches_seeds.csv"].append(
                {
                    "name": variant,
                    "seed": run.seed,
                    "supernet_val_top1": run.val_top1,
                    "alpha_entropy": run.entropy,
                }
            )
    for c in claims:
        for side, label, values in (("a", c.a_label, c.a), ("b", c.b_label, c.b)):
            out["claims_seeds.csv"] += [
                {"name": f"{c.id} {label}", "seed": i, "claim": c.id, "side": side, "value": v}
                for i, v in enumerate(values)
            ]
    return out


def _csv_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="raise")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_plot_data(rows: Mapping[str, list[dict[str, Any]]], out_dir: str | Path) -> list[Path]:
    """Write :func:`plot_rows`' files into `out_dir` (each atomically; a file with no rows keeps its header)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, columns in PLOT_FILES.items():
        path = out / name
        atomic_write_text(path, _csv_text(columns, list(rows.get(name, []))))
        paths.append(path)
    return paths


PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{{refresh_tag}}
<title>bnas-harness: DVC plots</title>
<script>
{bundle}
</script>
<style>body {{ font-family: sans-serif; }} table {{ border-spacing: 15px; }}</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def write_offline_template(path: str | Path) -> Path:
    """Write a `dvc plots show --html-template` page with vega, vega-lite and vega-embed inlined (no CDN), as the
    globals DVC's plot divs call. Needs the `vl-convert-python` package (a dependency of the harness)."""
    try:
        import vl_convert
    except ImportError:
        raise DataError("vl-convert-python is not installed: `make install` (it is in pyproject.toml)") from None
    # DVC's plot divs call vegaEmbed(el, spec): render SVG (text in the page, sharp when zoomed)
    bundle = vl_convert.javascript_bundle(
        "window.vegaEmbed = (el, spec, opts) => vegaEmbed(el, spec, Object.assign({renderer: 'svg'}, opts || {}));"
        " window.vega = vega; window.vegaLite = vegaLite;"
    )
    if "</script" in bundle:  # would end the inline <script> early
        bundle = bundle.replace("</script", "<\\/script")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, PAGE.format(bundle=bundle))
    return out
