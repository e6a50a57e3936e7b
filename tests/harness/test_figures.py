"""`bnas figures`: the cell diagrams (labels, routing, the T_B skip), the alpha heatmaps' edge order, the learning
curves and the claims figure, on small fixture run folders written here."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import yaml
from matplotlib.colors import to_hex
from matplotlib.transforms import Bbox
from scipy import stats

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from harness import figures  # noqa: E402
from harness.claims import Claim, build_claims, claims_table  # noqa: E402
from harness.figures import (  # noqa: E402
    alpha_figure,
    cell_figure,
    claims_figure,
    draw_genotype,
    edge_labels,
    learning_curves_figure,
    read_history,
    write_figures,
)
from harness.search_results import collect_searches  # noqa: E402
from harness.tables import collect_runs  # noqa: E402
from methods.bnas.genotypes import (  # noqa: E402
    DARTS_PRIMITIVES,
    GENOTYPES,
    PRIMITIVES,
    Genotype,
    genotype_to_json,
)

CONCAT = (2, 3, 4, 5)


def _g(normal: list[tuple[str, int]], reduce: list[tuple[str, int]]) -> Genotype:
    return Genotype(tuple(normal), CONCAT, tuple(reduce), CONCAT).validate()


CASES: dict[str, tuple[Genotype, tuple[str, ...]]] = {
    "latest_cell": (GENOTYPES["latest_cell"], PRIMITIVES),
    "latest_cell_zeroise": (GENOTYPES["latest_cell_zeroise"], PRIMITIVES),
    # the quick profile's No Skip cell: two bin_conv_5x5 edges leave c_{k-1} (their labels used to collide)
    "quick_no_skip": (
        _g(
            [
                ("max_pool_3x3", 0),
                ("bin_conv_5x5", 1),
                ("bin_conv_5x5", 1),
                ("bin_dil_conv_3x3", 0),
                ("none", 1),
                ("bin_dil_conv_3x3", 3),
                ("bin_dil_conv_3x3", 0),
                ("bin_conv_5x5", 2),
            ],
            [
                ("bin_conv_3x3", 0),
                ("bin_conv_3x3", 1),
                ("max_pool_3x3", 0),
                ("bin_conv_3x3", 1),
                ("bin_dil_conv_3x3", 0),
                ("none", 1),
                ("bin_conv_5x5", 3),
                ("max_pool_3x3", 0),
            ],
        ),
        PRIMITIVES,
    ),
    # the DARTS space's longest names on the longest edges (every node reads both cell inputs), and on the shortest
    "darts_long_names": (
        _g(
            [
                ("bin_dil_sep_conv_5x5", 0),
                ("bin_dil_sep_conv_3x3", 1),
                ("bin_dil_sep_conv_5x5", 0),
                ("bin_dil_sep_conv_3x3", 1),
                ("bin_dil_sep_conv_5x5", 0),
                ("bin_dil_sep_conv_3x3", 1),
                ("bin_dil_sep_conv_5x5", 0),
                ("bin_dil_sep_conv_3x3", 1),
            ],
            [
                ("bin_dil_sep_conv_5x5", 0),
                ("bin_dil_sep_conv_3x3", 1),
                ("bin_dil_sep_conv_5x5", 1),
                ("bin_dil_sep_conv_3x3", 2),
                ("bin_sep_conv_5x5", 2),
                ("skip_connect", 3),
                ("bin_sep_conv_3x3", 3),
                ("bin_dil_sep_conv_5x5", 4),
            ],
        ),
        DARTS_PRIMITIVES,
    ),
    # a node reading the same input twice (valid for Genotype.validate): the second arc must not hide the first
    "repeated_input": (
        _g(
            [("bin_conv_3x3", 1), ("bin_conv_5x5", 1)] + [("max_pool_3x3", 1), ("avg_pool_3x3", 2)] * 3,
            [("none", 0), ("none", 0)] + [("bin_dil_conv_5x5", 0), ("bin_dil_conv_3x3", 2)] * 3,
        ),
        PRIMITIVES,
    ),
}


@pytest.fixture(scope="module", params=list(CASES))
def drawing(request: pytest.FixtureRequest):
    genotype, prims = CASES[request.param]
    d = cell_figure(genotype, "test", skip=True, primitives=prims)
    d.figure.canvas.draw()
    d.genotype = genotype  # type: ignore[attr-defined]
    yield d
    plt.close(d.figure)


def _samples(patch, n: int = 60) -> np.ndarray:
    """Points along an arrow's drawn path (data coordinates), Bezier segments evaluated at n parameters each."""
    pts = [seg(np.linspace(0.0, 1.0, n)) for seg, _ in patch.get_path().iter_bezier()]
    return np.concatenate([np.atleast_2d(p) for p in pts])


def test_cell_edges_are_the_genotypes_and_labels_name_their_legend_op(drawing):
    legend = {t.get_text(): h for t, h in zip(drawing.legend.get_texts(), drawing.legend.legend_handles, strict=True)}
    for cell, genes in (("normal", drawing.genotype.normal), ("reduce", drawing.genotype.reduce)):
        ops = [e for e in drawing.edges if e.cell == cell and e.kind == "op"]
        expected = [
            (op, "c_{k-2}" if j == 0 else "c_{k-1}" if j == 1 else f"n{j - 2}", f"n{k // 2}")
            for k, (op, j) in enumerate(genes)
        ]
        assert [(e.op, e.src, e.dst) for e in ops] == expected
        for e in ops:
            assert e.label.get_text() == e.op  # the full name, no abbreviation
            assert e.op in legend, f"{e.op} is not in the legend {sorted(legend)}"
            assert to_hex(e.patch.get_edgecolor()) == to_hex(legend[e.op].get_color())
            assert to_hex(e.label.get_color()) == to_hex(legend[e.op].get_color())


def test_cell_labels_overlap_neither_each_other_nor_a_node(drawing):
    renderer = drawing.figure.canvas.get_renderer()
    for cell, ax in drawing.axes.items():
        boxes = [
            (e.label.get_text(), e.label.get_window_extent(renderer))
            for e in drawing.edges
            if e.cell == cell and e.label is not None
        ]
        assert len(boxes) == 9  # 8 ops and the skip
        for i, (ta, a) in enumerate(boxes):
            for tb, b in boxes[i + 1 :]:
                assert not a.overlaps(b), f"{cell}: label {ta!r} overlaps {tb!r}"
            for name, (x, y) in drawing.nodes.items():
                r = drawing.radius
                node = Bbox(ax.transData.transform([(x - r, y - r), (x + r, y + r)]))
                assert not a.overlaps(node), f"{cell}: label {ta!r} covers node {name}"


def test_cell_labels_sit_on_their_own_edge(drawing):
    for e in drawing.edges:
        if e.label is None:
            continue
        x, y = e.label.get_position()
        dist = np.hypot(*(_samples(e.patch) - (x, y)).T).min()
        assert dist < 0.15, f"{e.cell}: label {e.label.get_text()!r} is {dist:.2f} units from its edge"


def test_cell_edges_run_through_no_other_node_and_join_their_own(drawing):
    r = drawing.radius
    for e in drawing.edges:
        pts = _samples(e.patch)
        for name, (x, y) in drawing.nodes.items():
            dist = np.hypot(pts[:, 0] - x, pts[:, 1] - y).min()
            if name in (e.src, e.dst):  # it starts and ends on its nodes' circles (the head's stroke reaches them)
                assert dist < r * 1.25, f"{e.cell} {e.kind} {e.src}->{e.dst} ends {dist:.3f} from node {name}"
            else:
                assert dist > r * 1.2, f"{e.cell} {e.kind} {e.src}->{e.dst} passes {dist:.3f} from node {name}"


def test_no_skip_cells_draw_no_skip():
    genotype, prims = CASES["quick_no_skip"]
    with_skip = cell_figure(genotype, skip=True, primitives=prims)
    no_skip = cell_figure(genotype, skip=False, primitives=prims)
    try:
        skips = [e for e in with_skip.edges if e.kind == "skip"]
        assert [(e.cell, e.src, e.dst) for e in skips] == [("normal", "c_{k-1}", "out"), ("reduce", "c_{k-1}", "out")]
        assert not [e for e in no_skip.edges if e.kind == "skip"]
        for ax in no_skip.axes.values():
            assert not [p for p in ax.patches if ":skip:" in (p.get_gid() or "")]
            assert not [t for t in ax.texts if "skip" in t.get_text()]  # neither a skip label nor "concat + skip"
            assert "concat" in [t.get_text() for t in ax.texts]
        assert not [t for t in no_skip.legend.get_texts() if "skip" in t.get_text()]
        assert len([e for e in no_skip.edges if e.kind == "concat"]) == 8  # n0..n3 into the output, both cells
    finally:
        plt.close(with_skip.figure)
        plt.close(no_skip.figure)


def test_draw_genotype_writes_a_png_and_no_temporary_file(tmp_path):
    out = draw_genotype(GENOTYPES["latest_cell"], tmp_path / "cells.png", "latest_cell", skip=False)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.png"]


def _epoch_file(d: Path, epoch: int, prims: tuple[str, ...], hot: tuple[int, int]) -> None:
    alphas = [[0.0] * len(prims) for _ in range(14)]
    alphas[hot[0]][hot[1]] = 5.0
    (d / "genotypes").mkdir(parents=True, exist_ok=True)
    (d / "genotypes" / f"epoch{epoch:03d}.json").write_text(
        json.dumps({"epoch": epoch, "primitives": list(prims), "alphas_normal": alphas, "alphas_reduce": alphas})
    )


@pytest.mark.parametrize("prims", [PRIMITIVES, DARTS_PRIMITIVES], ids=["S_B", "darts"])
def test_alpha_heatmap_rows_are_the_supernet_edges_in_order(tmp_path, prims):
    from methods.bnas.search_cell import edge_index, num_edges

    hot = (edge_index(2, 3), len(prims) - 1)  # the edge n1 -> n2, the space's last op
    for epoch in (1, 2):
        _epoch_file(tmp_path / "search" / "seed2", epoch, prims, hot)
    fig = alpha_figure(tmp_path / "search" / "seed2")
    try:
        heatmaps = [ax for ax in fig.axes if ax.images]
        assert len(heatmaps) == 4  # 2 epochs x (normal, reduce)
        names = {0: "$c_{k-2}$", 1: "$c_{k-1}$"}
        for ax in heatmaps:
            ticks = [t.get_text() for t in ax.get_yticklabels()]
            assert ticks == edge_labels(4) and len(ticks) == num_edges(4) == 14
            for node in range(4):
                for state in range(node + 2):
                    assert ticks[edge_index(node, state)] == f"n{node} ← {names.get(state, f'n{state - 2}')}"
            assert [t.get_text() for t in ax.get_xticklabels()] == list(prims)  # full names, the file's order
            img = np.asarray(ax.images[0].get_array())
            assert img.shape == (14, len(prims))
            assert np.unravel_index(img.argmax(), img.shape) == hot
            assert img.sum(axis=1) == pytest.approx(np.zeros(14), abs=1e-9)  # softmax - 1/K sums to 0 per edge
    finally:
        plt.close(fig)


def _history(path: Path, rows: list[dict]) -> None:
    keys = ["epoch", "train/loss", "train/top1", "val/loss", "val/top1"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in keys})


def _training_run(d: Path, losses: list[float], val: dict[int, float], finished: bool = True, seed: int = 0) -> None:
    d.mkdir(parents=True)
    rows = [{"epoch": e, "train/loss": v, "train/top1": 10.0 * e + seed} for e, v in enumerate(losses, 1)]
    for r in rows:
        if r["epoch"] in val:
            r.update({"val/loss": 1.0, "val/top1": val[r["epoch"]]})
    _history(d / "history.csv", rows)
    if finished:
        (d / "metrics.json").write_text(json.dumps({"val/top1": val[max(val)], "cost/ops": 1e6}))
        (d / "config.yaml").write_text(yaml.safe_dump({"train": {"model": d.parent.name, "seed": seed}}))


def _write_training_runs(root: Path) -> None:
    base = root / "cifar10"
    # validation only at the last of 4 epochs (eval_interval = epochs = 4, the small profile)
    _training_run(base / "bnas_a" / "seed0", [2.0, 1.8, 1.6, 1.5], {4: 40.0}, seed=0)
    _training_run(base / "bnas_a" / "seed1", [2.2, 2.0, 1.8, 1.7], {4: 44.0}, seed=1)
    _training_run(base / "bnas_a" / "seed2", [9.0, 9.0], {2: 99.0}, finished=False, seed=2)  # still running
    _training_run(base / "bireal_resnet18_cifar" / "seed0", [2.1, 1.9, 1.7, 1.6], {2: 30.0, 4: 35.0})
    s = base / "search" / "seed2"  # a search's history is no training curve
    s.mkdir(parents=True)
    _history(s / "history.csv", [{"epoch": e, "train/loss": 3.0, "val/top1": 10.0} for e in (1, 2, 3, 4)])


def test_read_history_keeps_the_last_row_of_a_repeated_epoch(tmp_path):
    _history(
        tmp_path / "h.csv",
        [
            {"epoch": 1, "train/loss": 3.0},
            {"epoch": 1, "train/loss": 2.0},
            {"epoch": 2, "train/loss": 1.0, "val/top1": 5.0},
        ],
    )
    assert read_history(tmp_path / "h.csv") == {
        1: {"epoch": 1.0, "train/loss": 2.0},
        2: {"epoch": 2.0, "train/loss": 1.0, "val/top1": 5.0},  # empty cells are left out
    }


def test_learning_curves_have_every_epoch_and_validation_markers(tmp_path):
    _write_training_runs(tmp_path)
    fig = learning_curves_figure(tmp_path)
    try:
        loss, top1, val = fig.axes
        for ax, key in ((loss, "train/loss"), (top1, "train/top1")):
            lines = {ln.get_gid(): ln for ln in ax.lines}
            assert set(lines) == {f"bnas_a:{key}", f"bireal_resnet18_cifar:{key}"}  # no search, no unfinished seed
            for ln in lines.values():
                assert list(ln.get_xdata()) == [1, 2, 3, 4]  # a point per epoch, not just the evaluated ones
            bands = [c.get_gid() for c in ax.collections]
            assert bands == [f"bnas_a:{key}:band"]  # min..max band where there are 2 seeds
        assert list(lines["bnas_a:train/top1"].get_ydata()) == pytest.approx([10.5, 20.5, 30.5, 40.5])
        lines = {ln.get_gid(): ln for ln in loss.lines}
        assert list(lines["bnas_a:train/loss"].get_ydata()) == pytest.approx([2.1, 1.9, 1.7, 1.6])  # seed2 left out
        marks = {ln.get_gid(): ln for ln in val.lines if ln.get_gid()}
        a = marks["bnas_a:val/top1"]
        assert a.get_linestyle() == "None" and a.get_marker() == "D"  # markers, no 1-point line
        assert len(a.get_xdata()) == 1 and abs(a.get_xdata()[0] - 4) < 0.5 and a.get_ydata()[0] == pytest.approx(42)
        assert "bnas_a:val/top1:join" not in marks
        b = marks["bireal_resnet18_cifar:val/top1"]
        assert [round(x) for x in b.get_xdata()] == [2, 4] and list(b.get_ydata()) == [30.0, 35.0]
        assert len(marks["bireal_resnet18_cifar:val/top1:join"].get_xdata()) == 2
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        assert legend == ["bireal_resnet18_cifar (n=1)", "bnas_a (n=2)"]
    finally:
        plt.close(fig)


def _claims() -> list[Claim]:
    return [
        Claim("1", "A > B, clearly", "paper 1", "A one", "B one", [60.0, 61.0, 62.0], [50.0, 51.0, 52.5]),
        Claim("2", "A > B, B not run", "paper 2", "A two", "B two", [60.0, 61.0], []),
        Claim("3", "A > B, one seed each", "paper 3", "A three", "B three", [60.0], [59.0], unit="% bin-conv ops"),
    ]


def test_claims_figure_has_one_row_per_claim_with_its_interval_and_verdict():
    claims = _claims()
    raw = claims_table(claims, "quick").raw
    fig = claims_figure(claims, "quick")
    try:
        rows = [ax for ax in fig.axes if (ax.get_gid() or "").startswith("claim:")]
        assert [ax.get_gid() for ax in rows] == ["claim:1", "claim:2", "claim:3"]
        verdicts = [
            next(t.get_text() for t in ax.texts if t.get_gid() == f"claim:{c.id}:verdict")
            for c, ax in zip(claims, rows, strict=True)
        ]
        assert verdicts == [r["verdict"] for r in raw] == ["direction reproduced", "not run", "inconclusive"]
        one = rows[0]
        for side, vals, y in (("A", claims[0].a, 1.0), ("B", claims[0].b, 0.0)):
            seeds = next(c for c in one.collections if c.get_gid() == f"claim:1:{side}:seeds")
            assert sorted(seeds.get_offsets()[:, 0]) == vals
            mean = next(ln for ln in one.lines if ln.get_gid() == f"claim:1:{side}:mean")
            assert mean.get_xdata()[0] == pytest.approx(np.mean(vals))
            half = stats.t.ppf(0.975, len(vals) - 1) * np.std(vals, ddof=1) / math.sqrt(len(vals))
            whiskers = [s for c in one.collections if hasattr(c, "get_segments") for s in c.get_segments()]
            assert any(
                seg[0][0] == pytest.approx(np.mean(vals) - half)
                and seg[1][0] == pytest.approx(np.mean(vals) + half)
                and seg[0][1] == pytest.approx(y)
                for seg in whiskers
            ), f"no 95% t interval drawn for side {side}"
        two = rows[1]
        assert [t.get_gid() for t in two.texts if t.get_text() == "not run"] == ["claim:2:B:not run", "claim:2:verdict"]
        assert not [c for c in two.collections if c.get_gid() == "claim:2:B:seeds"]
        assert "no CI" in rows[2].get_yticklabels()[0].get_text()  # one seed: no interval
    finally:
        plt.close(fig)


def _search_run(d: Path, genotype: Genotype, prims: tuple[str, ...], no_skip: bool, space: str) -> None:
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"search": {"skip": not no_skip, "space": space, "seed": 2}}))
    (d / "genotype_derived.json").write_text(genotype_to_json(genotype))
    _epoch_file(d, 1, prims, (0, 0))


def test_write_figures_draws_the_claims_from_the_runs_and_each_search_with_its_skip(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    _write_training_runs(runs)
    _search_run(
        runs / "cifar10" / "search_no_skip" / "seed2", GENOTYPES["latest_cell_zeroise"], PRIMITIVES, True, "bnas"
    )
    _search_run(
        runs / "cifar10" / "search_darts_space" / "seed2",
        CASES["darts_long_names"][0],
        DARTS_PRIMITIVES,
        False,
        "darts",
    )
    ref = tmp_path / "reference.yaml"
    ref.write_text("{}\n")
    drawn, claimed = [], []
    real_draw, real_claims = figures.draw_genotype, figures.claims_figure

    def draw(genotype, path, title="", skip=True, primitives=None):
        drawn.append((path.name, skip, tuple(primitives or ())))
        return real_draw(genotype, path, title, skip, primitives)

    def claims_fig(claims, profile):
        claimed.extend(claims)
        return real_claims(claims, profile)

    monkeypatch.setattr(figures, "draw_genotype", draw)
    monkeypatch.setattr(figures, "claims_figure", claims_fig)
    out = tmp_path / "results" / "figures"
    paths = write_figures(runs, ref, out, "quick")
    assert sorted(drawn) == [
        ("cells_search_darts_space_seed2.png", True, DARTS_PRIMITIVES),
        ("cells_search_no_skip_seed2.png", False, PRIMITIVES),  # the search's config.yaml: search.no_skip
    ]
    expected = build_claims({}, collect_runs(runs, "cifar10"), collect_searches(runs, "cifar10"))
    assert [(c.id, c.a, c.b) for c in claimed] == [(c.id, c.a, c.b) for c in expected]
    assert next(c for c in claimed if c.id == "4a").a == [40.0, 44.0]  # BNAS-A's finished seeds
    names = sorted(p.name for p in paths)
    assert names == sorted(
        [
            "accuracy_vs_ops.png",
            "learning_curves.png",
            "claims.png",
            "cells_search_no_skip_seed2.png",
            "alphas_search_no_skip_seed2.png",
            "cells_search_darts_space_seed2.png",
            "alphas_search_darts_space_seed2.png",
        ]
    )
    assert sorted(p.name for p in out.iterdir()) == names  # nothing else: no temporary files left
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
