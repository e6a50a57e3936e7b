"""BNAS genotypes and discrete networks (the search arrives with the next part of the BNAS issue)."""

from __future__ import annotations

import pytest
import timm
import torch

import methods  # noqa: F401
from methods.bnas import PRIMITIVES, GenotypeError, get_genotype
from methods.bnas.genotypes import Genotype, genotype_from_json, genotype_to_json
from methods.bnas.network import BnasCell


def test_search_space_is_exactly_the_seven_ops():
    assert PRIMITIVES == (
        "none",
        "max_pool_3x3",
        "avg_pool_3x3",
        "bin_dil_conv_3x3",
        "bin_dil_conv_5x5",
        "bin_conv_3x3",
        "bin_conv_5x5",
    )


@pytest.mark.parametrize("name,params", [("bnas_a", 5_578_252), ("bnas_f", 39_781_442)])
def test_parameter_counts_match_the_release_logs(name, params):
    m = timm.create_model(name)
    assert sum(p.numel() for p in m.parameters()) == params


def test_genotype_json_roundtrip_and_validation(tmp_path):
    for name in ("latest_cell_zeroise", "latest_cell"):
        g = get_genotype(name)
        assert genotype_from_json(genotype_to_json(g)) == g
        assert all(op in PRIMITIVES for op, _ in g.normal + g.reduce)
    p = tmp_path / "genotype.json"
    p.write_text(genotype_to_json(get_genotype("latest_cell")))
    assert genotype_from_json(p) == get_genotype("latest_cell")
    bad = genotype_to_json(get_genotype("latest_cell")).replace("bin_conv_3x3", "sep_conv_3x3", 1)
    with pytest.raises(GenotypeError, match="unknown op 'sep_conv_3x3'"):
        genotype_from_json(bad)
    g = get_genotype("latest_cell")
    with pytest.raises(GenotypeError, match="input 5 invalid for node 0"):
        Genotype(((g.normal[0][0], 5),) + g.normal[1:], g.normal_concat, g.reduce, g.reduce_concat).validate()
    with pytest.raises(GenotypeError, match="malformed"):
        genotype_from_json("{not json")
    with pytest.raises(GenotypeError, match="unknown genotype 'DARTS'"):
        get_genotype("DARTS")


def _naive_cell_forward(cell: BnasCell, s0, s1):
    """The straightforward T_B cell: every op computed, Zeroise included, summed per node."""
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    for i in range(4):
        states.append(sum(cell.ops[k](states[cell.indices[k]]) for k in (2 * i, 2 * i + 1)))
    out = torch.cat([states[j] for j in cell.concat], dim=1)
    if not cell.has_skip:
        return out
    return out + (cell.preprocess_res(s1) if cell.preprocess_res is not None else s1)


@pytest.mark.parametrize("train", [False, True])
def test_skipping_zeroise_and_dead_preprocessing_changes_nothing(train):
    torch.manual_seed(0)
    m = timm.create_model("bnas_a", layers=5, init_channels=8).double()
    m.train(train)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    s0 = s1 = m.stem(x)
    for cell in m.cells:
        torch.manual_seed(1)
        fast = cell(s0, s1)
        torch.manual_seed(1)
        ref = _naive_cell_forward(cell, s0, s1)
        torch.testing.assert_close(fast, ref, rtol=0, atol=0)
        s0, s1 = s1, fast


def test_no_skip_switch_removes_the_template_skips():
    full = timm.create_model("bnas_a", layers=5, init_channels=8)
    ablated = timm.create_model("bnas_a", layers=5, init_channels=8, skip=False)
    assert all(c.has_skip == (i > 0) for i, c in enumerate(full.cells))
    assert not any(c.has_skip for c in ablated.cells) and all(c.preprocess_res is None for c in ablated.cells)


def test_forward_backward_cifar_and_imagenet():
    m = timm.create_model("bnas_a", layers=5, init_channels=8)
    y = m(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.sum().backward()
    m = timm.create_model("bnas_d", layers=3, init_channels=16)
    y = m(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()
    y.sum().backward()
