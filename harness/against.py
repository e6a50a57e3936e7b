"""`bnas tables --against REF`: does a re-run reproduce the committed tables of this harness, row by row?

REF is a folder holding a previous `bnas tables` output, or `git:<rev>[:<folder>]` for the tables committed at a git
revision (`git:HEAD`: the published tables of this checkout, results/; `git:HEAD:results/quick`: the quick
profile's). Every row that has per-seed values on both sides (CIFAR-10,
ImageNet and ablation rows, the two sides of each claim) is compared: both means, the difference, a two-sided Welch
p-value of the re-run's seeds against the committed seeds, Holm-corrected over the rows, and the verdict of the
claims' rule (:func:`harness.stats.claim_verdict` with no expected direction): **same** (p >= 0.05, or identical
seeds), **higher** / **lower** (p < 0.05). Each claim's verdict is compared too.
"""

from __future__ import annotations

import csv
import io
import math
import subprocess
from pathlib import Path
from typing import Any

from harness.errors import DataError
from harness.stats import holm, summarize, welch_p
from harness.tables import Table

__all__ = ["read_tables", "against_table", "TABLE_FILES"]

TABLE_FILES = ("cifar10.csv", "imagenet.csv", "ablation.csv", "claims.csv")


def _parse_csv(text: str) -> list[dict[str, str]]:
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


def read_tables(ref: str | Path, results: str = "results") -> dict[str, list[dict[str, str]]]:
    """The CSV twins of a `bnas tables` output: from a folder, or from `git:<rev>[:<folder>]` (the files under
    `<folder>`, default `results`, at that revision). A table missing on that side is an empty list.

    Raises:
        DataError: the folder does not exist, or git cannot read the revision.
    """
    out: dict[str, list[dict[str, str]]] = {}
    ref = str(ref)
    if ref.startswith("git:"):
        rev, _, sub = ref.removeprefix("git:").partition(":")
        rev, results = rev or "HEAD", sub.strip("/") or results
        try:
            subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            raise DataError(f"--against {ref}: not a git revision of this repository") from None
        for name in TABLE_FILES:
            r = subprocess.run(["git", "show", f"{rev}:{results}/{name}"], capture_output=True, text=True)
            out[name] = _parse_csv(r.stdout) if r.returncode == 0 else []
        return out
    folder = Path(ref)
    if not folder.is_dir():
        raise DataError(f"--against {ref}: no such folder (expected a `bnas tables` output or git:<rev>)")
    for name in TABLE_FILES:
        p = folder / name
        out[name] = _parse_csv(p.read_text()) if p.is_file() else []
    return out


def _values(s: str | None) -> list[float]:
    return [float(x) for x in (s or "").split()]


def _rows(tables: dict[str, list[dict[str, str]]]) -> dict[str, list[float]]:
    """Row key -> per-seed values, once per run folder (a folder in several tables is one row), plus the claims'
    sides that are not a run folder's top-1 (e.g. claim 5's share of binary convs)."""
    rows: dict[str, list[float]] = {}
    for name in ("cifar10.csv", "imagenet.csv"):
        for r in tables.get(name, []):
            if r.get("run_folder") and r.get("top1_values"):
                rows[f"{name.removesuffix('.csv')}/{r['run_folder']} top-1"] = _values(r["top1_values"])
    for r in tables.get("ablation.csv", []):
        if r.get("model", "").startswith("ours:") and r.get("top1_values"):
            rows[f"cifar10/{r['model'].removeprefix('ours:')} top-1"] = _values(r["top1_values"])
    for r in tables.get("claims.csv", []):
        if r.get("unit", "top-1 %") == "top-1 %":
            continue
        for side in ("a", "b"):
            if r.get(f"{side}_values"):
                rows[f"claim {r['claim']} {side.upper()}: {r[f'{side}_label']} ({r['unit']})"] = _values(
                    r[f"{side}_values"]
                )
    return rows


def _fmt(x: float, digits: int = 2) -> str:
    return "—" if math.isnan(x) else f"{x:.{digits}f}"


def against_table(new: dict[str, list[dict[str, str]]], ref: dict[str, list[dict[str, str]]], label: str) -> Table:
    """Row-by-row comparison of a re-run's tables (`new`) with the committed ones (`ref`)."""
    a, b = _rows(new), _rows(ref)
    keys = [k for k in b if k in a] + [k for k in a if k not in b]
    pvals = [welch_p(a[k], b[k]) if k in a and k in b and a[k] != b[k] else math.nan for k in keys]
    adjusted = holm(pvals)
    rows, raw = [], []
    for k, p, pa in zip(keys, pvals, adjusted, strict=True):
        sa, sb = summarize(a.get(k, [])), summarize(b.get(k, []))
        delta = sa.mean - sb.mean if sa.n and sb.n else math.nan
        if k not in b:
            v = "new row"
        elif a[k] == b[k]:
            v = "identical"
        elif math.isnan(pa):
            v = "no test (n < 2)"
        else:
            v = "same" if pa >= 0.05 else ("higher" if delta > 0 else "lower")
        rows.append([k, sa.fmt(), str(sa.n), sb.fmt(), str(sb.n), _fmt(delta), _fmt(p, 3), _fmt(pa, 3), f"**{v}**"])
        raw.append(
            {
                "row": k,
                "rerun_mean": sa.mean,
                "rerun_std": sa.std,
                "rerun_n": sa.n,
                "rerun_values": " ".join(f"{x:.4f}" for x in a.get(k, [])),
                "committed_mean": sb.mean,
                "committed_std": sb.std,
                "committed_n": sb.n,
                "committed_values": " ".join(f"{x:.4f}" for x in b.get(k, [])),
                "delta": delta,
                "p_welch": p,
                "p_holm": pa,
                "verdict": v,
            }
        )
    missing = [k for k in b if k not in a]
    claim_changes = _claim_changes(new.get("claims.csv", []), ref.get("claims.csv", []))
    same = sum(r["verdict"] in ("same", "identical") for r in raw if r["row"] in b)
    compared = sum(1 for r in raw if r["row"] in b and r["verdict"] != "no test (n < 2)")
    notes = [
        f"Re-run (these runs) against `{label}`. {same} of {compared} tested rows agree (same or identical); "
        f"{len(missing)} committed rows have no re-run" + (f" ({', '.join(missing)})" if missing else "") + ".",
        "Verdict per row: identical seeds; **same** = Welch p (Holm over the rows) >= 0.05; **higher** / **lower** = "
        "p < 0.05 in that direction; no test = fewer than 2 seeds on a side. Different CPUs change binary networks' "
        "float summation order, so bit-identical numbers are expected only on the same machine and software.",
        "Claims: " + ("every claim keeps its verdict." if not claim_changes else "; ".join(claim_changes) + "."),
    ]
    columns = ["Row", "Re-run", "n", "Committed", "n", "Δ", "p (Welch)", "p (Holm)", "Verdict"]
    return Table("against", "Reproduction check: this re-run against the committed tables", notes, columns, rows, raw)


def _claim_changes(new: list[dict[str, str]], ref: list[dict[str, str]]) -> list[str]:
    old = {r["claim"]: r.get("verdict", "") for r in ref}
    out = []
    for r in new:
        before: Any = old.get(r["claim"])
        if before is not None and before != r.get("verdict"):
            out.append(f"claim {r['claim']}: {before} -> {r.get('verdict')}")
    return out
