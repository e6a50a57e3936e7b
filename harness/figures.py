"""`bnas figures` and `bnas show`: the result figures, drawn from the runs' files (PNG, matplotlib Agg, written
atomically).

- `accuracy_vs_ops.png`: top-1 against OPs (FLOPs + BOPs/64) with the Pareto front; our CIFAR-10 runs (mean over
  seeds, bars = min..max) and the paper's ImageNet points (poster table), each dataset in its own panel.
- `learning_curves.png`: every CIFAR-10 training method folder (finished seeds: those with a metrics.json), one colour
  per method: training loss and training top-1 at every epoch (lines: mean over seeds, band: min..max), validation
  top-1 as markers (bars: min..max) at the epochs it was measured (every `train.eval_interval` epochs and the last).
- `claims.png`: one row per claim of `claims.csv`, computed from the runs as `bnas tables` does
  (:func:`harness.claims.build_claims`, :func:`harness.claims.claims_table`): each side's seeds (dots), mean and 95%
  t interval, the difference, the Holm p and the verdict; a side without runs reads "not run".
- `cells_<search>_seed<N>.png`: the searched normal and reduction cells (genotype_derived.json, else genotype.json)
  as arc diagrams (:func:`draw_genotype`; `bnas show` draws any genotype): each edge labelled with its op's full name
  as in the legend, no edge through a node, the T_B skip drawn only where the search had it (its config.yaml's
  `search.skip`).
- `alphas_<search>_seed<N>.png`: softmax(alpha) - 1/K heatmaps of both cells at up to 5 evenly spaced search epochs
  and the last; rows: the 14 edges in the supernet's order, labelled node <- input (:func:`edge_labels`); columns:
  the search space's ops (the epoch files' `primitives`, S_B or the DARTS space).
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import DataError
from harness.io import atomic_path, read_history
from harness.tables import collect_runs, read_reference

__all__ = [
    "OP_COLOURS",
    "CellDrawing",
    "DrawnEdge",
    "accuracy_vs_ops",
    "alpha_figure",
    "alpha_heatmaps",
    "cell_figure",
    "claims_figure",
    "draw_claims",
    "draw_genotype",
    "edge_labels",
    "learning_curves",
    "learning_curves_figure",
    "read_history",
    "write_figures",
]

DPI = 110

# one colour per op of every search space (S_B's, then the DARTS space's); the legend of a cell figure lists its space's
OP_COLOURS = {
    "none": "#9e9e9e",
    "max_pool_3x3": "#1f77b4",
    "avg_pool_3x3": "#17becf",
    "bin_dil_conv_3x3": "#d62728",
    "bin_dil_conv_5x5": "#ff7f0e",
    "bin_conv_3x3": "#2ca02c",
    "bin_conv_5x5": "#9467bd",
    "skip_connect": "#8c564b",
    "bin_sep_conv_3x3": "#bcbd22",
    "bin_sep_conv_5x5": "#e377c2",
    "bin_dil_sep_conv_3x3": "#843c39",
    "bin_dil_sep_conv_5x5": "#393b79",
}
SKIP_COLOUR = "#222222"
CONCAT_COLOUR = "#b0b0b0"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _plt()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
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


def _training_histories(runs_root: Path, dataset: str) -> dict[str, list[dict[int, dict[str, float]]]]:
    """The histories of every training method folder's finished seeds (those with a metrics.json, as the tables)."""
    base = runs_root / dataset
    out: dict[str, list[dict[int, dict[str, float]]]] = {}
    if not base.is_dir():
        return out
    for mdir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("search")):
        hists = [
            read_history(s / "history.csv")
            for s in sorted(mdir.glob("seed*"))
            if (s / "metrics.json").is_file() and (s / "history.csv").is_file()
        ]
        hists = [h for h in hists if h]
        if hists:
            out[mdir.name] = hists
    return out


def _over_seeds(
    hists: list[dict[int, dict[str, float]]], key: str
) -> tuple[list[int], list[float], list[float], list[float]]:
    """The epochs at which some seed has `key`, with the mean, min and max over the seeds that have it there."""
    epochs = sorted({e for h in hists for e, r in h.items() if key in r})
    vals = [[h[e][key] for h in hists if e in h and key in h[e]] for e in epochs]
    return epochs, [sum(v) / len(v) for v in vals], [min(v) for v in vals], [max(v) for v in vals]


def _colours(n: int) -> list[Any]:
    cmap = _plt().get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def learning_curves_figure(runs_root: str | Path, dataset: str = "cifar10") -> Any:
    """The learning-curves figure (see the module docstring): three panels, training loss, training top-1 and
    validation top-1, one colour per method folder; returns the matplotlib figure."""
    plt = _plt()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    runs = _training_histories(Path(runs_root), dataset)
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.8), dpi=DPI, layout="constrained", sharex=True)
    handles = []
    spread = 0.4  # the validation markers of the methods spread over +-0.2 epochs around an epoch they share
    for idx, ((name, hists), colour) in enumerate(zip(runs.items(), _colours(len(runs)), strict=True)):
        for ax, key in zip(axes[:2], ("train/loss", "train/top1"), strict=True):
            ep, mean, lo, hi = _over_seeds(hists, key)
            if not ep:
                continue
            ax.plot(ep, mean, color=colour, marker="o", ms=3, lw=1.6, gid=f"{name}:{key}")
            if len(hists) > 1:
                ax.fill_between(ep, lo, hi, color=colour, alpha=0.18, lw=0, gid=f"{name}:{key}:band")
        ep, mean, lo, hi = _over_seeds(hists, "val/top1")
        if ep:
            dx = (idx / (len(runs) - 1) - 0.5) * spread if len(runs) > 1 else 0.0
            x = [e + dx for e in ep]
            yerr = [[m - v for m, v in zip(mean, lo, strict=True)], [v - m for m, v in zip(mean, hi, strict=True)]]
            bars = axes[2].errorbar(x, mean, yerr=yerr, fmt="D", ms=5, color=colour, capsize=3, lw=1.2)
            bars.lines[0].set_gid(f"{name}:val/top1")
            if len(ep) > 1:  # measured at several epochs: a dotted line joins the measurements
                axes[2].plot(x, mean, ls=":", lw=1, color=colour, gid=f"{name}:val/top1:join")
        handles.append(Line2D([0], [0], color=colour, marker="o", ms=4, lw=1.6, label=f"{name} (n={len(hists)})"))
    titles = (
        ("training loss, every epoch", "cross-entropy"),
        ("training top-1, every epoch (the epoch's augmented training batches)", "top-1 (%)"),
        ("validation top-1 (full test set), at the epochs evaluated", "top-1 (%)"),
    )
    for ax, (title, ylabel) in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if not runs:
            ax.text(0.5, 0.5, "no finished training runs yet", ha="center", transform=ax.transAxes)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.suptitle(
        f"{dataset}: learning curves of the training runs, mean over the finished seeds (band and bars: min..max over "
        "seeds; validation markers spread sideways per method)",
        fontsize=11,
    )
    return fig


def learning_curves(runs_root: str | Path, path: Path, dataset: str = "cifar10") -> Path:
    """Write :func:`learning_curves_figure` to `path`."""
    return _save(learning_curves_figure(runs_root, dataset), path)


# ------------------------------------------------------------------------------------------------------------ cells

_INPUTS = ("c_{k-2}", "c_{k-1}")
_NODE_RADIUS = 0.17  # data units; one unit = the distance between neighbouring nodes, the same in x and y


def _state_name(j: int) -> str:
    """Node name of cell state `j`: 0 = c_{k-2}, 1 = c_{k-1}, 2.. = the intermediate nodes n0, n1, ..."""
    return _INPUTS[j] if j < 2 else f"n{j - 2}"


def _state_tex(j: int) -> str:
    return f"${_state_name(j)}$" if j < 2 else _state_name(j)


def edge_labels(steps: int = 4) -> list[str]:
    """The edges of a cell in the supernet's (DARTS) order, as "n<i> ← <input>": node i reads the states 0..i+1
    (0 = c_{k-2}, 1 = c_{k-1}, 2.. = nodes 0..), the edge (i, j) at index sum(2 + m for m < i) + j
    (`methods.bnas.search_cell.edge_index`); 14 edges for 4 nodes."""
    return [f"n{i} ← {_state_tex(j)}" for i in range(steps) for j in range(2 + i)]


def _op_height(span: int, dup: int) -> float:
    """Apex height of the arc of an op edge over `span` node distances: higher for longer edges, so that arcs of
    different spans share no height (nor do their labels), but less than in proportion, so that the arcs leaving a
    node part at different angles; `dup` > 0 for a repeated (input, node) pair."""
    return 0.45 * math.sqrt(span) * (1.0 + 0.45 * dup)


def _out_height(span: int) -> float:
    """Depth of the arc of an edge into the output below the node line (concat inputs and the T_B skip)."""
    return 0.22 + 0.1 * (span - 1)


def _arc(
    a: float, b: float, height: float, above: bool
) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float], float]:
    """The arc from the node at x = a to the node at x = b > a (both on y = 0) reaching `height` above (or below) the
    line: its start and end on the nodes' circles, its Bezier control point and matplotlib's arc3 `rad`. Short arcs
    leave and enter near the top (bottom) of a circle, long ones near its side, so that the arcs at a node leave
    from different points and a short one crosses a long one at a wide angle instead of running along it."""
    span = b - a
    phi = math.radians(max(20.0, 85.0 - 15.0 * (span - 1)))
    r = _NODE_RADIUS * 1.03
    sign = 1.0 if above else -1.0
    y = sign * r * math.sin(phi)
    p0, p2 = (a + r * math.cos(phi), y), (b - r * math.cos(phi), y)
    chord = p2[0] - p0[0]
    lift = sign * 2.0 * (height - r * math.sin(phi))  # control point offset: twice the apex's
    # arc3 puts the control point at the chord's midpoint + rad * (dy, -dx) (display space = data space here)
    return p0, ((p0[0] + p2[0]) / 2.0, y + lift), p2, -lift / chord


def _arrow(ax: Any, geom: tuple[Any, ...], gid: str, **style: Any) -> Any:
    """Add the arrow along the arc `geom` (:func:`_arc`) to `ax`."""
    from matplotlib.patches import FancyArrowPatch

    p0, _, p2, rad = geom
    patch = FancyArrowPatch(
        p0,
        p2,
        connectionstyle=f"arc3,rad={rad}",
        arrowstyle="-|>",
        mutation_scale=12,
        shrinkA=0,
        shrinkB=0,
        zorder=2,
        gid=gid,
        **style,
    )
    ax.add_patch(patch)
    return patch


def _edge_label(ax: Any, text: str, colour: str) -> Any:
    """An edge's label (placed later by :func:`_place_labels`)."""
    box = {"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.9}
    return ax.text(0, 0, text, fontsize=8, color=colour, ha="center", va="center", bbox=box, zorder=5)


def _bezier(p0: tuple[float, float], c: tuple[float, float], p2: tuple[float, float], t: float) -> tuple[float, float]:
    u = 1.0 - t
    return (
        u * u * p0[0] + 2 * u * t * c[0] + t * t * p2[0],
        u * u * p0[1] + 2 * u * t * c[1] + t * t * p2[1],
    )


@dataclass
class DrawnEdge:
    """One arrow of a cell drawing: `kind` "op" (an edge of the genotype), "concat" (a node into the output) or
    "skip" (the T_B skip from c_{k-1}, added to the output); `src`/`dst` node names (c_{k-2}, c_{k-1}, n0.., out);
    `op` the op's name ("" for concat edges); `patch` the arrow, `label` its text (None for concat edges)."""

    cell: str
    kind: str
    src: str
    dst: str
    op: str
    patch: Any
    label: Any = None


@dataclass
class CellDrawing:
    """A drawn cell pair: the figure, the axes of each cell ("normal", "reduce"), the node centres in data
    coordinates (the same in both cells; x and y at the same scale), the node radius, the edges and the legend."""

    figure: Any
    axes: dict[str, Any]
    nodes: dict[str, tuple[float, float]]
    radius: float
    edges: list[DrawnEdge] = field(default_factory=list)
    legend: Any = None


def _space_of(genotype: Any) -> tuple[str, ...]:
    """The first search space holding every op of the genotype (S_B, then the DARTS space), else all ops."""
    from methods.bnas.genotypes import ALL_PRIMITIVES, SPACES

    ops = {op for cell in (genotype.normal, genotype.reduce) for op, _ in cell}
    return next((p for p in SPACES.values() if ops <= set(p)), ALL_PRIMITIVES)


def _place_labels(fig: Any, ax: Any, items: list[tuple[Any, list[tuple[float, float]]]], blocked: list[Any]) -> None:
    """Put each label at the first of its candidate positions (data coordinates) whose box overlaps neither a
    node nor a label already placed (else at the candidate overlapping least); `blocked` holds display boxes."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    for text, candidates in items:
        best, best_cost = candidates[0], math.inf
        for pos in candidates:
            text.set_position(pos)
            bb = text.get_window_extent(renderer).padded(3)
            cost = 0.0
            for other in blocked:
                inter = Bbox.intersection(bb, other)
                if inter is not None:
                    cost += inter.width * inter.height
            if cost < best_cost:
                best, best_cost = pos, cost
            if cost == 0:
                break
        text.set_position(best)
        blocked.append(text.get_window_extent(renderer).padded(3))


def cell_figure(
    genotype: Any, title: str = "", skip: bool = True, primitives: Sequence[str] | None = None
) -> CellDrawing:
    """Draw the normal and reduction cells of a genotype (`normal`/`reduce`: (op, input) pairs, two per node) as arc
    diagrams: the inputs c_{k-2}, c_{k-1}, the nodes n0.. and the output on a line; the op edges as arcs above it
    (longer edges higher, so that no arc passes through a node), each labelled with its op's full name as in the
    legend (Zeroise = "none", dashed); the nodes concatenated into the output and, when `skip`, the T_B skip from
    c_{k-1} as arcs below it. `skip=False` draws the No Skip ablation's cell (no skip). `primitives`: the ops of the
    legend (default: the search space holding the genotype's ops). Returns the drawing (figure and artists)."""
    plt = _plt()
    from collections import Counter

    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle
    from matplotlib.transforms import Bbox

    prims = tuple(primitives) if primitives is not None else _space_of(genotype)
    cells = {
        "normal": (genotype.normal, getattr(genotype, "normal_concat", None)),
        "reduce": (genotype.reduce, getattr(genotype, "reduce_concat", None)),
    }
    steps = max(len(genes) for genes, _ in cells.values()) // 2
    names = [*_INPUTS, *(f"n{i}" for i in range(steps)), "out"]
    nodes = {n: (float(i), 0.0) for i, n in enumerate(names)}
    out_x = steps + 2
    plans: dict[str, tuple[list[tuple[str, int, int, float]], list[int]]] = {}
    for cell, (genes, concat) in cells.items():
        seen: Counter[tuple[int, int]] = Counter()
        ops = []
        for k, (op, j) in enumerate(genes):
            dst = 2 + k // 2
            ops.append((op, j, dst, _op_height(dst - j, seen[(j, dst)])))
            seen[(j, dst)] += 1
        plans[cell] = (ops, sorted(set(concat or range(2, 2 + steps))))
    top = max((h for ops, _ in plans.values() for *_, h in ops), default=0.5) + 0.27
    deepest = max([_out_height(out_x - min(ins)) for _, ins in plans.values() if ins], default=0.0)
    bottom = -(max(deepest, _out_height(out_x - 1)) + 0.32 if skip else deepest + 0.15)
    # figure geometry: x and y in data units at the same scale, so that matplotlib's arc3 curves (computed in
    # display space) are the Bezier curves computed here
    x0, x1 = -0.55, out_x + 0.55
    width_in, side_in = 14.0, 0.2
    per_unit = (width_in - 2 * side_in) / (x1 - x0)
    ax_h_in = (top - bottom) * per_unit
    legend_in, gap_in, sup_in = 0.75, 0.45, (0.75 if title else 0.45)
    height_in = legend_in + 2 * ax_h_in + 2 * gap_in + sup_in
    fig = plt.figure(figsize=(width_in, height_in), dpi=DPI)
    drawing = CellDrawing(fig, {}, nodes, _NODE_RADIUS)
    skip_text = {"normal": "T_B skip: identity (none in the first cell)", "reduce": "T_B skip: BN + 2x2/2 conv"}
    for r, cell in enumerate(cells):
        y_in = legend_in + (1 - r) * (ax_h_in + gap_in)
        ax = fig.add_axes(
            (side_in / width_in, y_in / height_in, (width_in - 2 * side_in) / width_in, ax_h_in / height_in)
        )
        ax.set_xlim(x0, x1)
        ax.set_ylim(bottom, top)
        ax.axis("off")
        name = "normal cell" if cell == "normal" else "reduction cell"
        ax.set_title(name + ("" if skip else " (no T_B skip: the No Skip ablation)"), fontsize=11)
        drawing.axes[cell] = ax
        for n, (x, y) in nodes.items():
            fc = "#fff3c4" if n in _INPUTS else ("#d4edda" if n == "out" else "#cfe2ff")
            ax.add_patch(Circle((x, y), _NODE_RADIUS, fc=fc, ec="k", lw=1.2, zorder=3, gid=f"{cell}:node:{n}"))
            text = "concat\n+ skip" if (n == "out" and skip) else ("concat" if n == "out" else n)
            text = f"${n}$" if n in _INPUTS else text
            ax.text(x, y, text, ha="center", va="center", fontsize=7 if n == "out" else 10, zorder=4)

        labels: list[tuple[Any, list[tuple[float, float]]]] = []
        ops, ins = plans[cell]
        for op, j, dst, h in ops:
            src, d = _state_name(j), names[dst]
            colour = OP_COLOURS.get(op, "k")
            geom = _arc(float(j), float(dst), h, above=True)
            style = {"color": colour, "lw": 1.2 if op == "none" else 2.0, "ls": "--" if op == "none" else "-"}
            patch = _arrow(ax, geom, f"{cell}:op:{src}->{d}:{op}", **style)
            label = _edge_label(ax, op, colour)
            drawing.edges.append(DrawnEdge(cell, "op", src, d, op, patch, label))
            cands = [_bezier(geom[0], geom[1], geom[2], t) for t in (0.5, 0.4, 0.6, 0.3, 0.7, 0.22, 0.78)]
            cands += [(x, y + dy) for dy in (0.13, -0.13) for x, y in cands]
            labels.append((label, cands))
        for i in ins:
            src = _state_name(i)
            geom = _arc(float(i), float(out_x), _out_height(out_x - i), above=False)
            patch = _arrow(ax, geom, f"{cell}:concat:{src}->out", color=CONCAT_COLOUR, lw=1.0)
            drawing.edges.append(DrawnEdge(cell, "concat", src, "out", "", patch))
        if skip:
            geom = _arc(1.0, float(out_x), _out_height(out_x - 1), above=False)
            patch = _arrow(ax, geom, f"{cell}:skip:c_{{k-1}}->out", color=SKIP_COLOUR, lw=1.6, ls=":")
            label = _edge_label(ax, skip_text[cell], SKIP_COLOUR)
            drawing.edges.append(DrawnEdge(cell, "skip", "c_{k-1}", "out", "T_B skip", patch, label))
            labels.append((label, [_bezier(geom[0], geom[1], geom[2], t) for t in (0.5, 0.4, 0.6, 0.3, 0.7)]))
        to_disp = ax.transData.transform
        blocked = [
            Bbox(to_disp([(x - _NODE_RADIUS, y - _NODE_RADIUS), (x + _NODE_RADIUS, y + _NODE_RADIUS)]))
            for x, y in nodes.values()
        ]
        _place_labels(fig, ax, labels, blocked)
    handles = [
        Line2D([0], [0], color=OP_COLOURS.get(op, "k"), lw=2, ls="--" if op == "none" else "-", label=op)
        for op in prims
    ]
    if skip:
        handles.append(Line2D([0], [0], color=SKIP_COLOUR, lw=1.6, ls=":", label="T_B skip from $c_{k-1}$ (added)"))
    handles.append(Line2D([0], [0], color=CONCAT_COLOUR, lw=1.0, label="node into the concat"))
    drawing.legend = fig.legend(
        handles=handles,
        loc="lower center",
        ncol=len(handles) if len(handles) <= 8 else math.ceil(len(handles) / 2),
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 0.05 / height_in),
    )
    sub = f"edges: the op on the node's input (none = Zeroise, outputs zeros); output: the concat of n0-n{steps - 1}"
    sub += " plus the T_B skip" if skip else " (no T_B skip)"
    fig.suptitle(f"{title}\n{sub}" if title else sub, fontsize=11 if title else 9, y=1 - 0.08 / height_in, va="top")
    return drawing


def draw_genotype(
    genotype: Any, path: Path, title: str = "", skip: bool = True, primitives: Sequence[str] | None = None
) -> Path:
    """Write :func:`cell_figure` of the genotype to `path` (`skip=False`: the No Skip ablation's cells)."""
    return _save(cell_figure(genotype, title, skip, primitives).figure, path)


# ---------------------------------------------------------------------------------------------------------- alphas


def _steps_for(n_edges: int) -> int | None:
    """The number of nodes of a cell with `n_edges` DARTS edges (4 for 14), None if no number fits."""
    steps, total = 0, 0
    while total < n_edges:
        total += 2 + steps
        steps += 1
    return steps if total == n_edges else None


def alpha_figure(search_dir: str | Path, max_epochs: int = 5) -> Any | None:
    """softmax(alpha) - 1/K of both cell types at up to `max_epochs` evenly spaced search epochs (and the last), from
    the search's genotypes/epochNNN.json; rows: the edges in the supernet's order (:func:`edge_labels`), columns: the
    file's `primitives`. Returns the figure, or None when the search has no per-epoch files.

    Raises:
        DataError: an unreadable or malformed epoch file.
    """
    import numpy as np

    search_dir = Path(search_dir)
    files = sorted((search_dir / "genotypes").glob("epoch*.json"))
    if not files:
        return None
    step = max(1, math.ceil(len(files) / max_epochs))
    chosen = files[::step]
    if files[-1] not in chosen:
        chosen.append(files[-1])
    try:
        data = [json.loads(f.read_text()) for f in chosen]
        k, n = len(data[0]["alphas_normal"][0]), len(data[0]["alphas_normal"])
        devs = {}
        for c, d in enumerate(data):
            for key in ("alphas_normal", "alphas_reduce"):
                a = np.asarray(d[key], dtype=float)
                e = np.exp(a - a.max(axis=-1, keepdims=True))
                devs[(c, key)] = e / e.sum(axis=-1, keepdims=True) - 1.0 / k
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise DataError(f"{search_dir}/genotypes: unreadable alphas ({type(e).__name__}: {e})") from None
    steps = _steps_for(n)
    ylabels = edge_labels(steps) if steps else [f"edge {i}" for i in range(n)]
    bounds = [sum(2 + m for m in range(i)) for i in range(1, steps)] if steps else []
    plt = _plt()
    fig, axes = plt.subplots(
        2, len(chosen), figsize=(3.3 * len(chosen) + 1.8, 8.2), dpi=DPI, squeeze=False, layout="constrained"
    )
    vmax = max(1e-4, max(float(abs(v).max()) for v in devs.values()))
    im = None
    for c, d in enumerate(data):
        prims = [str(p) for p in (d.get("primitives") or range(k))]
        for r, key in enumerate(("alphas_normal", "alphas_reduce")):
            ax = axes[r][c]
            im = ax.imshow(devs[(c, key)], cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
            ax.set_title(f"epoch {d.get('epoch', '?')}: {('normal', 'reduction')[r]} cell", fontsize=9)
            ax.set_xticks(range(k), prims, rotation=60, ha="right", rotation_mode="anchor", fontsize=6)
            ax.set_yticks(range(n), ylabels, fontsize=6)
            for b in bounds:  # the edges of one node between two lines
                ax.axhline(b - 0.5, color="k", lw=0.6)
            if c == 0:
                ax.set_ylabel("edge: node ← input (supernet order)", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.6, label=f"softmax(alpha) - 1/{k}  (red: above uniform)")
    fig.suptitle(
        f"{search_dir.parent.name}/{search_dir.name}: architecture weights over the search (deviation from uniform)",
        fontsize=11,
    )
    return fig


def alpha_heatmaps(search_dir: Path, path: Path, max_epochs: int = 5) -> Path | None:
    """Write :func:`alpha_figure` to `path`; None (nothing written) when the search has no per-epoch files."""
    fig = alpha_figure(search_dir, max_epochs)
    return None if fig is None else _save(fig, path)


# ---------------------------------------------------------------------------------------------------------- claims

VERDICT_COLOURS = {
    "direction reproduced": "#2ca02c",
    "contradicted": "#d62728",
    "inconclusive": "#b07d00",
    "not run": "#7f7f7f",
}


def _pfmt(x: float) -> str:
    return "—" if math.isnan(x) else ("<0.001" if x < 1e-3 else f"{x:.3f}")


def claims_figure(claims: Sequence[Any], profile: str) -> Any:
    """One row per claim (:class:`harness.claims.Claim`): each side's seeds (dots), mean (bar) and 95% t interval
    (whiskers, n >= 2), "not run" for a side without seeds; right of it the verdict, the difference and the Welch and
    Holm p-values, exactly as :func:`harness.claims.claims_table` computes them. Returns the figure."""
    from matplotlib.transforms import blended_transform_factory

    from harness.claims import claims_table
    from harness.stats import summarize

    plt = _plt()
    claims = list(claims)
    raw = claims_table(claims, profile).raw
    n = max(1, len(claims))
    row_in, ax_in, head_in, foot_in = 1.55, 0.62, 1.2, 0.4
    height = head_in + foot_in + row_in * n
    hspace = (n * row_in / ax_in - n) / (n - 1) if n > 1 else 0.0
    fig, axs = plt.subplots(
        n,
        1,
        figsize=(14, height),
        dpi=DPI,
        squeeze=False,
        gridspec_kw={
            "left": 0.27,
            "right": 0.78,
            "top": 1 - head_in / height,
            "bottom": foot_in / height,
            "hspace": hspace,
        },
    )
    if not claims:
        axs[0][0].axis("off")
        axs[0][0].text(0.5, 0.5, "no claims", ha="center", transform=axs[0][0].transAxes)
    for i, (c, row) in enumerate(zip(claims, raw, strict=True)):
        ax = axs[i][0]
        ax.set_gid(f"claim:{c.id}")
        blend = blended_transform_factory(ax.transAxes, ax.transData)
        xs: list[float] = []
        ticks = []
        for side, label, vals, y, colour in (
            ("A", c.a_label, c.a, 1.0, "#1f77b4"),
            ("B", c.b_label, c.b, 0.0, "#ff7f0e"),
        ):
            s = summarize(vals)
            ticks.append(
                f"{side}: {label}\n" + ("not run" if not s.n else f"n = {s.n}" + ("" if s.n > 1 else ", no CI"))
            )
            if not s.n:
                ax.text(
                    0.5,
                    y,
                    "not run",
                    transform=blend,
                    ha="center",
                    va="center",
                    color="#7f7f7f",
                    style="italic",
                    fontsize=9,
                    gid=f"claim:{c.id}:{side}:not run",
                )
                continue
            ys = [y + (m - (s.n - 1) / 2) * 0.08 for m in range(s.n)]
            ax.scatter(vals, ys, s=16, color=colour, alpha=0.6, zorder=3, gid=f"claim:{c.id}:{side}:seeds")
            xerr = [[s.mean - s.ci_lo], [s.ci_hi - s.mean]] if s.n > 1 else None
            bars = ax.errorbar(
                [s.mean], [y], xerr=xerr, fmt="|", ms=18, mew=2.2, color=colour, capsize=4, lw=1.6, zorder=4
            )
            bars.lines[0].set_gid(f"claim:{c.id}:{side}:mean")
            xs += [*vals, *([s.ci_lo, s.ci_hi] if s.n > 1 else [])]
        ax.set_yticks([1.0, 0.0], ticks, fontsize=7)
        ax.set_ylim(-0.6, 1.6)
        if xs:
            lo, hi = min(xs), max(xs)
            pad = max(0.08 * (hi - lo), 0.5)
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_xlabel(c.unit, fontsize=7, labelpad=1)
        else:
            ax.set_xticks([])
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
        for sp in ("top", "right"):
            ax.spines[sp].set_visible(False)
        verdict = str(row["verdict"])
        ax.text(
            1.02,
            0.75,
            verdict,
            transform=ax.transAxes,
            fontsize=9.5,
            fontweight="bold",
            va="center",
            color=VERDICT_COLOURS.get(verdict, "k"),
            gid=f"claim:{c.id}:verdict",
        )
        delta = row["delta"]
        details = "Δ (A − B): —" if math.isnan(delta) else f"Δ (A − B) = {delta:+.2f} ({c.unit})"
        details += f"\np Welch {_pfmt(row['p_welch'])}, Holm {_pfmt(row['p_holm'])}"
        ax.text(1.02, 0.2, details, transform=ax.transAxes, fontsize=7.5, va="center")
        pos = ax.get_position()
        head = textwrap.fill(f"{c.id}. {c.text}", 200) + "\n" + textwrap.shorten(f"paper: {c.paper}", 200)
        fig.text(0.012, pos.y1 + 0.06 / height, head, fontsize=7.5, va="bottom", ha="left")
    title = (
        f"The poster's claims on this harness's seeds (profile {profile}): dots = seeds, bar = mean, whiskers = 95% t "
        "interval; verdict and p-values as in claims.csv (Welch, Holm over the claims)"
    )
    if profile != "paper":
        title += "\nsmall networks and short runs: findings at this scale, NOT comparable to the paper"
    fig.suptitle(title, fontsize=10, y=1 - 0.1 / height, va="top")
    return fig


def draw_claims(claims: Sequence[Any], path: Path, profile: str) -> Path:
    """Write :func:`claims_figure` to `path`."""
    return _save(claims_figure(claims, profile), path)


# ----------------------------------------------------------------------------------------------------------- all


def _search_config(sdir: Path) -> dict[str, Any]:
    """The `search` section of a search run's config.yaml ({} without one)."""
    cfile = sdir / "config.yaml"
    if not cfile.is_file():
        return {}
    try:
        cfg = yaml.safe_load(cfile.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"{cfile}: unreadable run config ({e})") from None
    search = cfg.get("search") if isinstance(cfg, dict) else None
    return search if isinstance(search, dict) else {}


def write_figures(
    runs_root: str | Path, reference: str | Path, out_dir: str | Path, profile: str = "paper"
) -> list[Path]:
    """All figures into `out_dir` (see the module docstring); returns their paths. The claims are computed from the
    runs as `bnas tables` computes claims.csv; each search's cells are drawn with its T_B skip setting and its space.

    Raises:
        DataError: a missing or malformed reference file, or unreadable run files.
    """
    from harness.claims import build_claims
    from harness.search_results import collect_searches
    from methods.bnas.genotypes import SPACES, genotype_from_json

    runs_root, out_dir = Path(runs_root), Path(out_dir)
    ref = read_reference(reference)
    paths = [
        accuracy_vs_ops(runs_root, ref, out_dir / "accuracy_vs_ops.png", profile),
        learning_curves(runs_root, out_dir / "learning_curves.png"),
    ]
    claims = build_claims(ref, collect_runs(runs_root, "cifar10"), collect_searches(runs_root, "cifar10"))
    paths.append(draw_claims(claims, out_dir / "claims.png", profile))
    for sdir in sorted((runs_root / "cifar10").glob("search*/seed*")):
        tag = f"{sdir.parent.name}_{sdir.name}"
        search = _search_config(sdir)
        skip = bool(search.get("skip", not search.get("no_skip", False)))  # no_skip: runs before the rename
        space = str(search.get("space", "bnas"))
        g = sdir / "genotype_derived.json"
        if not g.is_file():
            g = sdir / "genotype.json"
        if g.is_file():
            title = f"cells of {sdir.parent.name}/{sdir.name} ({g.name}; space {space}"
            title += ")" if skip else "; search.skip: false, no T_B skip)"
            paths.append(
                draw_genotype(
                    genotype_from_json(g),
                    out_dir / f"cells_{tag}.png",
                    title,
                    skip=skip,
                    primitives=SPACES.get(space),
                )
            )
        a = alpha_heatmaps(sdir, out_dir / f"alphas_{tag}.png")
        if a is not None:
            paths.append(a)
    return paths
