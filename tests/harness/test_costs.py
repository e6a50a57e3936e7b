"""The cost counter on hand-computable models and on the papers' ImageNet figures."""

from __future__ import annotations

import json

import pytest
import timm
from click.testing import CliRunner
from torch import nn

import methods  # noqa: F401
from harness.cli import cli
from harness.costs import profile_model
from methods.binary import BinaryConv2d, LearnedScale


def _tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),  # real: 3*3*3*4*8*8 = 6912 MACs, 108 params
        nn.BatchNorm2d(4),  # 8 real params
        BinaryConv2d(
            4,
            6,
            3,
            stride=2,
            padding=1,
            input_quantizer="ste_sign",
            weight_quantizer="ste_sign",
            scale=LearnedScale(6, "channel"),
        ),  # binary: 3*3*4*6*4*4 = 3456 MACs, 216 bits; scale 6 real
        BinaryConv2d(6, 6, 1, weight_quantizer="xnor_weight"),  # binary weights, real input: 36*16 = 576 FLOPs
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 10),  # 60 MACs, 70 params
    )


def test_hand_computed_small_model():
    p = profile_model(_tiny(), (3, 8, 8))
    assert p.bops == 3456
    assert p.flops == 6912 + 576 + 60
    assert p.ops == pytest.approx(6912 + 576 + 60 + 3456 / 64)
    assert p.params_binary == 216 + 36
    assert p.params_real == 108 + 8 + 6 + 70
    assert p.memory_bits == 252 + 32 * 192
    assert p.audit["binary_inputs_in_alphabet"] is True
    assert p.audit["real_layers"] == ["0 (conv)", "3 (conv)", "6 (linear)"]
    scaled = profile_model(_tiny(), (3, 8, 8), policy="bireal_scales")
    assert scaled.flops == p.flops + 6 * 4 * 4
    allconv = profile_model(_tiny(), (3, 8, 8), policy="all_conv_binary")
    assert allconv.bops == 6912 + 3456 + 576 and allconv.flops == 60
    with pytest.raises(ValueError, match="unknown cost policy"):
        profile_model(_tiny(), (3, 8, 8), policy="mine")


@pytest.mark.parametrize(
    "name,paper_ops,tol",
    [
        ("bireal_resnet18", 1.63e8, 0.01),  # Bi-Real / ReActNet README
        ("bireal_resnet34", 1.93e8, 0.01),  # Bi-Real (UNVERIFIED in the spec; we land within 0.1%)
        ("xnornet_resnet18", 1.67e8, 0.02),  # ReActNet README; we count no input-scale (K) multiplies: -1.8%
    ],
)
def test_imagenet_ops_match_the_papers(name, paper_ops, tol):
    p = profile_model(timm.create_model(name), (3, 224, 224))
    assert p.ops == pytest.approx(paper_ops, rel=tol)
    assert p.audit["binary_inputs_in_alphabet"]


def test_bireal18_memory_and_the_fp_reference():
    p = profile_model(timm.create_model("bireal_resnet18"), (3, 224, 224))
    assert p.memory_bits / 1e6 == pytest.approx(33.6, rel=0.01)  # Bi-Real paper: 33.6 Mbit
    fp = profile_model(timm.create_model("resnet18"), (3, 224, 224))
    assert fp.bops == 0 and fp.flops == pytest.approx(1.82e9, rel=0.01)  # ResNet-18: 1.82 GMACs


def test_audit_catches_a_non_binary_input():
    class Leaky(nn.Module):  # claims to binarise but lets real values through
        name, bit_width = "leaky", 1

        def forward(self, x):
            return x

    m = nn.Sequential(BinaryConv2d(3, 4, 3, input_quantizer=Leaky(), weight_quantizer="ste_sign"))
    p = profile_model(m, (3, 8, 8))
    assert p.audit["binary_inputs_in_alphabet"] is False and p.audit["non_binary_inputs"] == ["0"]


def test_profile_cli_json_and_table():
    res = CliRunner().invoke(cli, ["profile", "bireal_resnet18", "--dataset", "imagenet", "--json", "--totals"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    for k in ("params_total", "params_binary", "params_real", "memory_bits", "bops", "flops", "ops", "policy"):
        assert k in d
    assert d["policy"] == "bireal"
    res = CliRunner().invoke(cli, ["profile", "xnornetpp_resnet18_cifar"])
    assert res.exit_code == 0 and "OPs = FLOPs + BOPs/64" in res.output and "layer4.1.conv2" in res.output
    res = CliRunner().invoke(cli, ["profile", "nope_net"])
    assert res.exit_code != 0 and "unknown model 'nope_net'" in res.output


def test_bnas_d_flops_under_the_release_convention():
    """Poster: BNAS-D ~1.48e8 FLOPs, reached only when the residual 2x2 convs count as binary (first release)."""
    release = profile_model(
        timm.create_model("bnas_d", official_binary_res_weights=True), (3, 224, 224), "binary_weights"
    )
    assert release.ops == pytest.approx(1.48e8, rel=0.01)
    assert release.bops == pytest.approx(2.93e9 + 2.06e8, rel=0.01)  # cell BOPs + residual convs (docs/costs.md)
    head = profile_model(timm.create_model("bnas_d"), (3, 224, 224))  # HEAD: FP residual convs, papers' policy
    assert head.bops == pytest.approx(2.93e9, rel=0.01) and head.flops == pytest.approx(
        0.975e8 + 0.01e8 + 2.06e8, rel=0.01
    )
