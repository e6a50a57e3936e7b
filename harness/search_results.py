"""The searches' results as data: every `bnas search` run folder's final alpha entropy, supernet accuracy and cells.

Read by `bnas tables` for the searches table, the search rows of the ablation table and the claims
(:mod:`harness.claims`). Sources: `runs/<dataset>/<variant>/seed<N>/{metrics.json,config.yaml,genotype.json}` and the
per-epoch `genotypes/epochNNN.json` files `bnas search` writes (Kim, Singh, Choi, ECCV 2020: a search ends with the
cell derived from the alphas; the diversity regulariser acts on the early epochs).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import DataError

__all__ = [
    "SearchRun",
    "collect_searches",
    "alpha_spread",
    "binary_conv_share",
    "early_epochs",
    "SEARCH_VARIANTS",
    "SEARCHED_SIZES",
    "BATS_SEARCH",
]

# ablation column -> (search variant folder, retrain method folder) of runs/cifar10
SEARCH_VARIANTS: dict[str, tuple[str, str]] = {
    "full": ("search", "bnas_searched"),
    "no_skip": ("search_no_skip", "ablation_no_skip"),
    "no_zeroise": ("search_no_zeroise", "ablation_no_zeroise"),
    "no_div": ("search_no_div", "ablation_no_div"),
    "darts_space": ("search_darts_space", "ablation_darts_space"),
}
# the ablation table's BNAS-B and BNAS-C rows (Full column only): the `search` variant's cell retrained at their
# INFERRED sizes (pipeline.searched_sizes) -> method folder of runs/cifar10
SEARCHED_SIZES: dict[str, str] = {"BNAS-B": "bnas_b_searched", "BNAS-C": "bnas_c_searched"}
# BATS's space searched with this harness's searcher at BNAS's budget: (search variant folder, retrain method folder)
BATS_SEARCH: tuple[str, str] = ("search_bats", "bats_searched")


@dataclass
class SearchRun:
    """One finished search: its variant folder, seed, final alpha entropy (mean over edges, nats), the number of ops
    per edge, the supernet's final and best validation top-1, the cell it derived and its per-epoch cells."""

    variant: str
    seed: int
    epochs: int
    entropy: float
    n_ops: int
    val_top1: float
    best_val_top1: float
    genotype_sha: str
    lam: float
    tau: float
    alpha_spread: float = math.nan
    epoch_genotypes: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def max_entropy(self) -> float:
        """ln(number of ops): the entropy of uniform alphas, where every search starts (alphas ~ 1e-3 N(0, 1))."""
        return math.log(self.n_ops) if self.n_ops > 0 else math.nan


def _read(path: Path) -> Any:
    try:
        text = path.read_text()
        return yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise DataError(f"{path}: unreadable search file ({e})") from None


def collect_searches(root: str | Path, dataset: str = "cifar10") -> dict[str, list[SearchRun]]:
    """Every finished search (a metrics.json with `search/alpha_entropy`) under `root/dataset/search*/seed*`, by
    variant folder, seeds in order."""
    base = Path(root) / dataset
    out: dict[str, list[SearchRun]] = {}
    if not base.is_dir():
        return out
    for vdir in sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith("search")):
        runs = []
        for sdir in sorted(vdir.glob("seed*"), key=lambda p: p.name):
            mfile = sdir / "metrics.json"
            if not mfile.is_file():
                continue
            m = _read(mfile)
            if "search/alpha_entropy" not in m:
                continue
            cfg = _read(sdir / "config.yaml") if (sdir / "config.yaml").is_file() else {}
            sc = (cfg or {}).get("search", {})
            afile = next((f for f in (sdir / "alphas_final.json", sdir / "alphas.json") if f.is_file()), None)
            spread = alpha_spread(_read(afile)) if afile is not None else math.nan
            gfile = sdir / "genotype.json"
            g = _read(gfile) if gfile.is_file() else {}
            epochs: dict[int, dict[str, Any]] = {}
            n_ops = 0
            for efile in sorted((sdir / "genotypes").glob("epoch*.json")):
                e = _read(efile)
                epochs[int(e["epoch"])] = e["genotype"]
                n_ops = len(e.get("primitives", []))
            runs.append(
                SearchRun(
                    variant=vdir.name,
                    seed=int(sc.get("seed", sdir.name.removeprefix("seed") or 0)),
                    epochs=int(sc.get("epochs", max(epochs, default=0))),
                    entropy=float(m["search/alpha_entropy"]),
                    n_ops=n_ops,
                    val_top1=float(m.get("search/val_top1", math.nan)),
                    best_val_top1=float(m.get("search/best_val_top1", math.nan)),
                    genotype_sha=str(((g or {}).get("genotype") or {}).get("sha256", "")),
                    lam=float(sc.get("lam", 1.0)),
                    tau=float(sc.get("tau", 7.7)),
                    alpha_spread=spread,
                    epoch_genotypes=epochs,
                )
            )
        if runs:
            out[vdir.name] = runs
    return out


def alpha_spread(alphas: dict[str, Any]) -> float:
    """How far a search moved its alphas: the standard deviation of alpha over the ops of each edge, averaged over the
    edges of both cells. Searches start at 1e-3 N(0, 1) (spread ~1e-3); the entropy, quadratic in the deviations, hides
    moves of this size, the spread does not."""
    return statistics.fmean(statistics.stdev(r) for key in ("alphas_normal", "alphas_reduce") for r in alphas[key])


def binary_conv_share(genotype: dict[str, Any]) -> float:
    """Share of binary-conv ops (names starting with `bin_`) among the 16 chosen (op, input) pairs of a genotype: the
    top-2 edges of each node of the normal and the reduction cell."""
    ops = [op for cell in ("normal", "reduce") for op, _ in genotype[cell]]
    return sum(op.startswith("bin_") for op in ops) / len(ops)


def early_epochs(run: SearchRun) -> list[int]:
    """The search's early epochs: those in which the diversity weight exp(-t / tau) is still at least half its
    start (t = epoch - 1, as `diversity_weight`), i.e. t <= tau ln 2; at least the first epoch. With the paper's
    tau = 7.7 over 50 epochs: epochs 1-6. The same epochs are used for lambda = 0 runs (their tau is the same)."""
    last = int(math.floor(run.tau * math.log(2))) + 1
    return [e for e in sorted(run.epoch_genotypes) if e <= max(1, last)]
