"""`bnas figures` and `bnas show`: the result figures, drawn from the runs' files (PNG, matplotlib Agg).

- `accuracy_vs_ops.png`: top-1 against OPs (FLOPs + BOPs/64) with the Pareto front; our CIFAR-10 runs (mean over
  seeds, bars = min..max) and the paper's ImageNet points (poster table), each dataset in its own panel.
- `learning_curves.png`: validation top-1 and training loss per epoch, mean over seeds with a min..max band.
- `cells_<search>_seed<N>.png`: the searched normal and reduction cells as graphs (`bnas show` draws any genotype).
- `alphas_<search>_seed<N>.png`: softmax(alpha) heatmaps at several search epochs.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import yaml

from harness.errors import DataError
from harness.io import atomic_path
from harness.tables import collect_runs

__all__ = ["draw_genotype", "write_figures"]

OP_COLOURS = {
    "none": "#9e9e9e",
    "max_pool_3x3": "#1f77b4",
    "avg_pool_3x3": "#17becf",
    "bin_dil_conv_3x3": "#d62728",
    "bin_dil_conv_5x5": "#ff7f0e",
    "bin_conv_3x3": "#2ca02c",
    "bin_conv_5x5": "#9467bd",
}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _plt()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated (no other point has fewer or equal OPs and higher accuracy), sorted by OPs."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def accuracy_vs_ops(runs_root: Path, reference: dict[str, Any], path: Path, profile: str) -> Path:
    """Two panels: our CIFAR-10 runs, and ImageNet (paper points and our runs if any)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), constrained_layout=True)
    cifar = collect_runs(runs_root, "cifar10")
    ax = axes[0]
    pts = []
    for name, r in cifar.items():
        if math.isnan(r.ops) or not r.top1:
            continue
        m = sum(r.top1) / len(r.top1)
        x = r.ops / 1e6
        ax.errorbar(
            x, m, yerr=[[m - min(r.top1)], [max(r.top1) - m]], fmt="o", capsize=3, label=f"{name} (n={len(r.top1)})"
        )
        pts.append((x, m))
    front = _pareto(pts)
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), "k--", lw=1, label="Pareto front (ours)")
    ax.set_xlabel("OPs per image (millions, FLOPs + BOPs/64, our counter)")
    ax.set_ylabel("CIFAR-10 top-1 (%)")
    title = "CIFAR-10: this harness's runs"
    if profile != "paper":
        title += f"\n(profile '{profile}': small nets, few epochs: not comparable to the paper)"
    ax.set_title(title, fontsize=10)
    if pts:
        ax.legend(fontsize=7, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no CIFAR-10 runs yet", ha="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    ax = axes[1]
    paper = [(r["flops"], r["top1"], f"{r['method']} ({r['backbone']})") for r in reference.get("imagenet", [])]
    placed: list[tuple[float, float, bool]] = []
    for x, y, label in sorted(paper, key=lambda p: -p[1]):
        bnas = label.startswith("BNAS")
        marker = "*" if bnas else "o"
        ax.scatter(x, y, marker=marker, s=80 if bnas else 30, color="#d62728" if bnas else "#555")
        # BNAS labels left of their stars, the others right; a label close to one already placed on its side moves
        # down a line, so that none hides another
        clash = sum(side == bnas and abs(px - x) < 0.3 and abs(py - y) < 0.8 for px, py, side in placed)
        placed.append((x, y, bnas))
        ax.annotate(
            label,
            (x, y),
            fontsize=6,
            xytext=(-5 if bnas else 5, 2 - 8 * clash),
            textcoords="offset points",
            ha="right" if bnas else "left",
        )
    front = _pareto([(x, y) for x, y, _ in paper])
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), "--", color="#555", lw=1, label="Pareto front (paper numbers)")
    imnet = collect_runs(runs_root, "imagenet")
    for name, r in imnet.items():
        if r.top1 and not math.isnan(r.ops):
            ax.scatter(r.ops / 1e8, sum(r.top1) / len(r.top1), marker="D", color="#2ca02c", label=f"ours: {name}")
    if paper:
        ax.set_xlim(min(x for x, _, _ in paper) - 0.75, max(x for x, _, _ in paper) + 0.9)
    ax.set_xlabel("FLOPs (1e8; the poster's groups)")
    ax.set_ylabel("ImageNet top-1 (%)")
    ax.set_title(
        "ImageNet: the poster's table (red stars: BNAS)" + ("" if imnet else "; no ImageNet runs here"), fontsize=10
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _history(path: Path) -> list[dict[str, float]]:
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append({k: float(v) for k, v in r.items() if v not in ("", None) and _is_number(v)})
    return rows


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def learning_curves(runs_root: Path, path: Path, dataset: str = "cifar10") -> Path:
    """Val top-1 and train loss per epoch: mean over seeds, band = min..max."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), constrained_layout=True)
    base = Path(runs_root) / dataset
    any_curve = False
    for mdir in (
        sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("search")) if base.is_dir() else []
    ):
        hists = [_history(h) for h in sorted(mdir.glob("seed*/history.csv"))]
        hists = [h for h in hists if h]
        if not hists:
            continue
        any_curve = True
        for ax, key in zip(axes, ("val/top1", "train/loss"), strict=True):
            epochs = sorted({int(r["epoch"]) for h in hists for r in h if key in r})
            if not epochs:
                continue
            vals = [[r[key] for h in hists for r in h if int(r["epoch"]) == e and key in r] for e in epochs]
            mean = [sum(v) / len(v) for v in vals]
            (line,) = ax.plot(epochs, mean, marker="o", label=f"{mdir.name} (n={len(hists)})")
            ax.fill_between(epochs, [min(v) for v in vals], [max(v) for v in vals], alpha=0.2, color=line.get_color())
    from matplotlib.ticker import MaxNLocator

    for ax, label in zip(axes, ("validation top-1 (%) — full test set", "training loss"), strict=True):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if any_curve:
            ax.legend(fontsize=7)
    fig.suptitle(f"{dataset}: learning curves, mean over seeds (band: min..max)", fontsize=11)
    return _save(fig, path)


def draw_genotype(genotype: Any, path: Path, title: str = "") -> Path:
    """Draw the normal and reduction cells of a genotype: inputs c_{k-2}, c_{k-1}, nodes 0-3, the concat output and
    the T_B skip from c_{k-1}; each edge labelled with its op (Zeroise dashed grey)."""
    plt = _plt()
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 2, figsize=(14, 6), constrained_layout=True)
    pos = {0: (0.0, 0.75), 1: (0.0, 0.25), 2: (0.35, 0.85), 3: (0.5, 0.55), 4: (0.65, 0.25), 5: (0.8, 0.7)}
    out = (1.0, 0.5)
    labels = {0: "$c_{k-2}$", 1: "$c_{k-1}$", 2: "0", 3: "1", 4: "2", 5: "3"}
    handles = [
        Line2D([0], [0], color=c, lw=2, ls="--" if op == "none" else "-", label=op) for op, c in OP_COLOURS.items()
    ]
    fig.legend(handles=handles, loc="lower center", ncol=7, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    for ax, name in zip(axes, ("normal", "reduction"), strict=True):
        ax.set_xlim(-0.1, 1.1)
        ax.set_ylim(0.0, 1.02)
        ax.axis("off")
        ax.set_title(f"{name} cell", fontsize=11)
    fig.canvas.draw()  # fix the layout, so that label positions can be computed in display space
    for ax, name, genes in ((axes[0], "normal", genotype.normal), (axes[1], "reduction", genotype.reduce)):
        to_disp, to_data = ax.transData.transform, ax.transData.inverted().transform
        for k, (op, j) in enumerate(genes):
            dst = 2 + k // 2
            rad = 0.25 if k % 2 else -0.25
            colour = OP_COLOURS.get(op, "k")
            arrow = {
                "arrowstyle": "-|>",
                "color": colour,
                "lw": 1.2 if op == "none" else 2.0,
                "ls": "--" if op == "none" else "-",
                "connectionstyle": f"arc3,rad={rad}",
                "shrinkA": 14,
                "shrinkB": 14,
            }
            ax.annotate("", xy=pos[dst], xytext=pos[j], arrowprops=arrow)
            # the midpoint of matplotlib's arc3 Bezier curve, computed in display coordinates as arc3 does
            (x0, y0), (x1, y1) = to_disp(pos[j]), to_disp(pos[dst])
            lx, ly = to_data(((x0 + x1) / 2 + 0.5 * rad * (y1 - y0), (y0 + y1) / 2 - 0.5 * rad * (x1 - x0)))
            box = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85}
            ax.text(
                lx, ly, op.replace("bin_", "b_"), fontsize=7, color=colour, ha="center", va="center", bbox=box, zorder=5
            )
        grey = {"arrowstyle": "-|>", "color": "#bbb", "lw": 1, "shrinkA": 14, "shrinkB": 18}
        for i in range(2, 6):
            ax.annotate("", xy=out, xytext=pos[i], arrowprops=grey)
        skip = "identity" if name == "normal" else "BN + 2x2/2 conv"
        pink = {
            "arrowstyle": "-|>",
            "color": "#e377c2",
            "lw": 1.5,
            "ls": ":",
            "connectionstyle": "arc3,rad=0.35",
            "shrinkA": 14,
            "shrinkB": 18,
        }
        ax.annotate("", xy=out, xytext=pos[1], arrowprops=pink)
        ax.text(0.35, 0.1, f"T_B skip from $c_{{k-1}}$ ({skip})", fontsize=8, color="#e377c2", ha="center")
        for i, (x, y) in pos.items():
            ax.scatter([x], [y], s=900, color="#fff3c4" if i < 2 else "#cfe2ff", edgecolors="k", zorder=3)
            ax.text(x, y, labels[i], ha="center", va="center", fontsize=9, zorder=4)
        ax.scatter([out[0]], [out[1]], s=1100, color="#d4edda", edgecolors="k", zorder=3)
        ax.text(out[0], out[1], "concat\n+ skip", ha="center", va="center", fontsize=7, zorder=4)
    return _save(fig, path)


def alpha_heatmaps(search_dir: Path, path: Path, max_epochs: int = 5) -> Path | None:
    """softmax(alpha) - 1/K of both cell types at up to `max_epochs` evenly spaced search epochs."""
    import torch

    files = sorted((search_dir / "genotypes").glob("epoch*.json"))
    if not files:
        return None
    step = max(1, math.ceil(len(files) / max_epochs))
    chosen = files[::step]
    if files[-1] not in chosen:
        chosen.append(files[-1])
    plt = _plt()
    fig, axes = plt.subplots(
        2, len(chosen), figsize=(3.2 * len(chosen) + 1.5, 7.5), squeeze=False, constrained_layout=True
    )
    data = [json.loads(f.read_text()) for f in chosen]
    k = len(data[0]["alphas_normal"][0])
    devs = {
        (c, key): torch.softmax(torch.tensor(d[key]), -1).numpy() - 1.0 / k
        for c, d in enumerate(data)
        for key in ("alphas_normal", "alphas_reduce")
    }
    vmax = max(1e-4, max(float(abs(v).max()) for v in devs.values()))
    im = None
    for c, d in enumerate(data):
        prims = d.get("primitives") or [str(i) for i in range(k)]
        for r, key in enumerate(("alphas_normal", "alphas_reduce")):
            ax = axes[r][c]
            im = ax.imshow(devs[(c, key)], cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
            ax.set_title(f"epoch {d['epoch']}: {key.split('_')[1]} cell", fontsize=9)
            ax.set_xticks(range(len(prims)), [p.replace("bin_", "b_") for p in prims], rotation=70, fontsize=6)
            ax.set_yticks(range(14), [str(i) for i in range(14)], fontsize=6)
            if c == 0:
                ax.set_ylabel("edge (DARTS order)")
    fig.colorbar(im, ax=axes, shrink=0.6, label=f"softmax(alpha) - 1/{k}  (red: above uniform)")
    fig.suptitle(
        f"{search_dir.parent.name}/{search_dir.name}: architecture weights over the search (deviation from uniform)",
        fontsize=11,
    )
    return _save(fig, path)


def write_figures(
    runs_root: str | Path, reference: str | Path, out_dir: str | Path, profile: str = "paper"
) -> list[Path]:
    """All figures into `out_dir`; returns their paths."""
    from methods.bnas.genotypes import genotype_from_json

    runs_root, out_dir = Path(runs_root), Path(out_dir)
    try:
        ref = yaml.safe_load(Path(reference).read_text()) or {}
    except FileNotFoundError:
        raise DataError(f"{reference}: reference numbers file not found") from None
    paths = [
        accuracy_vs_ops(runs_root, ref, out_dir / "accuracy_vs_ops.png", profile),
        learning_curves(runs_root, out_dir / "learning_curves.png"),
    ]
    for sdir in sorted((runs_root / "cifar10").glob("search*/seed*")):
        tag = f"{sdir.parent.name}_{sdir.name}"
        g = sdir / "genotype_derived.json"
        if not g.is_file():
            g = sdir / "genotype.json"
        if g.is_file():
            paths.append(
                draw_genotype(
                    genotype_from_json(g),
                    out_dir / f"cells_{tag}.png",
                    f"cells of {sdir.parent.name}/{sdir.name} ({g.name})",
                )
            )
        a = alpha_heatmaps(sdir, out_dir / f"alphas_{tag}.png")
        if a is not None:
            paths.append(a)
    return paths
