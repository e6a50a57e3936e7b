"""BNAS genotypes: the search spaces' primitives and the published cells, as data.

Kim, Singh, Choi, "Learning Architectures for Binary Networks", ECCV 2020, arXiv 2002.06963 (docs/bnas.md §2, §5.1).
Three search spaces: the paper's S_B (`PRIMITIVES`); the DARTS space with its convs binarised (`DARTS_PRIMITIVES`;
Liu et al., "DARTS", ICLR 2019), to test the paper's claim that separable convs are detrimental to binary networks;
and BATS's binary space of grouped convs with channel shuffle (`BATS_PRIMITIVES`; Bulat et al., ECCV 2020), to compare
two binary NAS methods at one budget.
A genotype lists, per intermediate node, two (operation, input) pairs; inputs 0 and 1 are the cell inputs c_{k-2} and
c_{k-1}, inputs 2..5 the nodes 0..3. The cell output concatenates nodes 2..5.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "PRIMITIVES",
    "DARTS_PRIMITIVES",
    "BATS_PRIMITIVES",
    "SPACES",
    "ALL_PRIMITIVES",
    "Genotype",
    "GENOTYPES",
    "get_genotype",
    "genotype_to_json",
    "genotype_from_json",
    "genotype_hash",
    "GenotypeError",
]

# The 7 candidate operations of S_B, in the release's order (normal and reduction cells alike).
PRIMITIVES: tuple[str, ...] = (
    "none",  # Zeroise: a real operation that outputs zeros (kept in search and in final cells)
    "max_pool_3x3",
    "avg_pool_3x3",
    "bin_dil_conv_3x3",
    "bin_dil_conv_5x5",
    "bin_conv_3x3",
    "bin_conv_5x5",
)

# The DARTS space (Liu et al., ICLR 2019) in DARTS's order, its convs binarised as S_B's (methods.bnas.operations):
# separable convs (twice depthwise -> pointwise), dilated separable convs (once), and skip_connect (identity; a binary
# factorized reduction at stride 2).
DARTS_PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "bin_sep_conv_3x3",
    "bin_sep_conv_5x5",
    "bin_dil_sep_conv_3x3",
    "bin_dil_sep_conv_5x5",
)

# BATS's space (Bulat, Martinez, Tzimiropoulos, "BATS: Binary ArchitecTure Search", ECCV 2020), in DARTS's order:
# its "sep" and "dil" convs are single binary GROUPED convs followed by a channel shuffle, each with an identity skip at
# stride 1 (methods.bnas.operations.BatsGroupConv); skip_connect, the pools and Zeroise as in the DARTS space.
BATS_PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "bats_group_conv_3x3",
    "bats_group_conv_5x5",
    "bats_dil_group_conv_3x3",
    "bats_dil_group_conv_5x5",
)

# The search spaces by name (`SuperNet(space=...)`).
SPACES: dict[str, tuple[str, ...]] = {"bnas": PRIMITIVES, "darts": DARTS_PRIMITIVES, "bats": BATS_PRIMITIVES}

# Every op of every space (S_B's order, then the other spaces' new ops): what a final network's genotype may use.
ALL_PRIMITIVES: tuple[str, ...] = tuple(dict.fromkeys(p for space in SPACES.values() for p in space))


class GenotypeError(ValueError):
    """A genotype is malformed (unknown op, bad input index, wrong length)."""


class Genotype(NamedTuple):
    """A cell pair: `normal`/`reduce` are 8 (op, input) pairs, two per node; `*_concat` the nodes concatenated."""

    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]

    def validate(self, primitives: tuple[str, ...] = ALL_PRIMITIVES) -> Genotype:
        """Check ops (by default: of any search space), input indices and shape; returns self.

        Raises:
            GenotypeError: naming the cell, the position and what was expected.
        """
        for cell, ops, concat in (
            ("normal", self.normal, self.normal_concat),
            ("reduce", self.reduce, self.reduce_concat),
        ):
            if len(ops) != 8:
                raise GenotypeError(f"genotype.{cell}: expected 8 (op, input) pairs (2 per node), got {len(ops)}")
            for i, pair in enumerate(ops):
                if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                    raise GenotypeError(f"genotype.{cell}[{i}]: expected [op, input], got {pair!r}")
                op, j = pair
                if op not in primitives:
                    raise GenotypeError(f"genotype.{cell}[{i}]: unknown op {op!r}; expected one of {list(primitives)}")
                node = i // 2
                if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < node + 2:
                    raise GenotypeError(
                        f"genotype.{cell}[{i}]: input {j!r} invalid for node {node} (expected 0..{node + 1})"
                    )
            if sorted(concat) != list(range(2, 6)):
                raise GenotypeError(f"genotype.{cell}_concat: expected [2, 3, 4, 5], got {list(concat)}")
        return self


def _g(normal: list[tuple[str, int]], reduce: list[tuple[str, int]]) -> Genotype:
    return Genotype(tuple(normal), (2, 3, 4, 5), tuple(reduce), (2, 3, 4, 5)).validate()


# `latest_cell_zeroise`: the CIFAR-10 cell of BNAS-A (release commands and README figures; docs/bnas.md §5.1).
BNAS_CIFAR = _g(
    [
        ("none", 1),
        ("bin_dil_conv_3x3", 0),
        ("bin_conv_3x3", 1),
        ("none", 2),
        ("none", 2),
        ("none", 3),
        ("none", 3),
        ("none", 4),
    ],
    [
        ("max_pool_3x3", 0),
        ("none", 1),
        ("max_pool_3x3", 0),
        ("none", 2),
        ("none", 3),
        ("none", 2),
        ("none", 3),
        ("none", 4),
    ],
)

# `latest_cell`: the ImageNet cell of BNAS-D..H (release `--arch latest_cell`; docs/bnas.md §5.1).
BNAS_IMAGENET = _g(
    [
        ("bin_conv_3x3", 1),
        ("bin_dil_conv_3x3", 0),
        ("bin_conv_3x3", 1),
        ("bin_conv_3x3", 2),
        ("bin_conv_3x3", 2),
        ("bin_dil_conv_3x3", 1),
        ("bin_dil_conv_3x3", 1),
        ("bin_conv_3x3", 0),
    ],
    [
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 1),
        ("max_pool_3x3", 0),
        ("bin_conv_3x3", 2),
        ("max_pool_3x3", 0),
        ("bin_dil_conv_3x3", 3),
        ("max_pool_3x3", 0),
        ("bin_dil_conv_3x3", 4),
    ],
)

GENOTYPES: dict[str, Genotype] = {
    "latest_cell_zeroise": BNAS_CIFAR,
    "latest_cell": BNAS_IMAGENET,
}


def get_genotype(name: str) -> Genotype:
    """A published genotype by name (a dict lookup, never `eval`).

    Raises:
        GenotypeError: unknown name.
    """
    if name not in GENOTYPES:
        raise GenotypeError(f"unknown genotype '{name}'; expected one of {', '.join(GENOTYPES)} or a genotype.json")
    return GENOTYPES[name]


def _fields(g: Genotype) -> dict[str, list]:
    return {
        "normal": [list(p) for p in g.normal],
        "normal_concat": list(g.normal_concat),
        "reduce": [list(p) for p in g.reduce],
        "reduce_concat": list(g.reduce_concat),
    }


def genotype_hash(g: Genotype) -> str:
    """SHA-256 of the genotype's canonical JSON (sorted keys, no spaces): its content hash."""
    canon = json.dumps(_fields(g), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def genotype_to_json(g: Genotype) -> str:
    """Serialise to JSON (lists of [op, input]) with the content hash under "sha256"."""
    return json.dumps({**_fields(g), "sha256": genotype_hash(g)}, indent=2)


def genotype_from_json(text_or_path: str | Path) -> Genotype:
    """Parse and validate a genotype from JSON text or a `genotype.json` path (a bare genotype or a search result).

    Raises:
        GenotypeError: unreadable or malformed.
    """
    text = str(text_or_path)
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise GenotypeError(f"{path}: genotype file not found")
        text = path.read_text()
    try:
        d = json.loads(text)
        if isinstance(d, dict) and "genotype" in d:  # a `bnas search` result: {"genotype": {...}, "epoch": ...}
            d = d["genotype"]
        g = Genotype(
            tuple((str(p[0]), p[1]) for p in d["normal"]),
            tuple(d["normal_concat"]),
            tuple((str(p[0]), p[1]) for p in d["reduce"]),
            tuple(d["reduce_concat"]),
        )
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise GenotypeError(
            f"malformed genotype JSON ({type(e).__name__}: {e}); expected keys normal, "
            f"normal_concat, reduce, reduce_concat"
        ) from None
    g.validate()
    if "sha256" in d and d["sha256"] != genotype_hash(g):
        raise GenotypeError(
            f"genotype content hash mismatch: file says {str(d['sha256'])[:16]}..., content is "
            f"{genotype_hash(g)[:16]}... (edited by hand? remove the sha256 key to accept the new content)"
        )
    return g
