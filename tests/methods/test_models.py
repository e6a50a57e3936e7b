from __future__ import annotations

import importlib
import pkgutil

import pytest
import timm
import torch

import methods
from harness.errors import BnasError
from harness.models import create_model


def _our_models() -> list[str]:
    """Every model registered by a module under methods/ (from the modules' __all__)."""
    import methods.baselines as pkg

    names = []
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        names += [n for n in getattr(mod, "__all__", []) if timm.is_model(n)]
    return sorted(names)


def test_registered():
    expected = {
        "resnet18_cifar",
        "binarynet_resnet18",
        "xnornet_resnet18",
        "xnornetpp_resnet18",
        "bireal_resnet18",
        "bireal_resnet34",
    }
    names = set(_our_models())
    assert expected <= names
    assert {f"{n}_cifar" for n in expected - {"resnet18_cifar"}} <= names


# CBCN at its real width (256-2048 channels) takes ~30 s for one CPU forward/backward: the generic checks use 1/4
LIGHT = {"cbcn_resnet18": {"widths": [64, 128, 256, 512]}, "cbcn_resnet18_cifar": {"widths": [64, 128, 256, 512]}}


@pytest.mark.parametrize("name", _our_models())
def test_forward_backward_reset(name):
    m = timm.create_model(name, num_classes=10, **LIGHT.get(name, {}))
    x = torch.randn(2, 3, 32, 32)
    y = m(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.sum().backward()
    # a module may declare parameters that only its auxiliary loss trains (BONN's mixture prior)
    loss_only = {id(getattr(x, n)) for x in m.modules() for n in getattr(x, "loss_only_params", ())}
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad and id(p) not in loss_only)
    m.reset_classifier(7)
    assert m(x).shape == (2, 7)


def test_resnet18_cifar_shape_and_size():
    m = timm.create_model("resnet18_cifar", num_classes=10)
    assert sum(p.numel() for p in m.parameters()) == 11_173_962  # ResNet-18, CIFAR stem, 10 classes
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert m.forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)


def _bnas_models() -> list[str]:
    import methods.bnas.network as net

    return [n for n in net.__all__ if timm.is_model(n)]


def test_no_name_shadows_a_timm_builtin():
    timm_modules = [
        importlib.import_module(f"timm.models.{m.name}") for m in pkgutil.iter_modules(timm.models.__path__)
    ]
    assert len(_bnas_models()) == 8  # bnas_a, b, c (CIFAR-10), d ... h (ImageNet)
    for name in _our_models() + _bnas_models():
        owners = [mod.__name__ for mod in timm_modules if callable(getattr(mod, name, None))]
        assert owners == [], f"{name} shadows {owners}"


def test_unknown_model_is_a_clear_error():
    with pytest.raises(BnasError, match="unknown model 'resnet18_cifr'.*resnet18_cifar"):
        create_model("resnet18_cifr", 10)


def test_methods_does_not_import_harness_mlflow_or_click():
    import ast
    from pathlib import Path

    root = Path(methods.__file__).parent
    for f in root.rglob("*.py"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in {"harness", "mlflow", "click", "dvc"}, f"{f} imports {n}"


def test_resnet18_cifar_trains_through_the_engine(cifar_cache, tmp_path):
    """The first real model path: the full-precision CIFAR ResNet-18 on real CIFAR-10 images."""
    from _helpers import tiny_config

    from harness.training import run_train

    m = run_train(
        tiny_config(model="resnet18_cifar", epochs=1, train_subset=256, test_subset=256),
        cifar_cache,
        tmp_path / "run",
        progress=False,
    )
    assert m["params"] == 11_173_962 and m["val/n"] == 256
    assert 0 < m["train/loss"] < 10 and 0 <= m["val/top1"] <= 100


IMAGENET_VARIANTS = [n for n in _our_models() if "_cifar" not in n]


# the issue-18 families at 224 run with `pytest -m slow` (CBCN: 2.7e10 BOPs, ~10 s); each trains once, tiny, on
# Imagenette below in the default suite
NEWER = ("abcnet", "binaryduo", "cbcn", "react", "pcnn", "bonn")


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith(NEWER) else n for n in IMAGENET_VARIANTS]
)
def test_imagenet_variants_at_224(name):
    m = timm.create_model(name)
    y = m(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()
    y.sum().backward()


SMALL = {"widths": [16, 32, 64, 128]}  # the quick profile's widths
BASELINES_CIFAR = {
    "binarynet_resnet18_cifar": SMALL,
    "xnornet_resnet18_cifar": SMALL,
    "xnornetpp_resnet18_cifar": SMALL,
    "bireal_resnet18_cifar": SMALL,
    "abcnet_resnet18_cifar": {**SMALL, "weight_bases": 3, "activation_bases": 3},
    "binaryduo_resnet18_cifar": {"widths": [16, 23, 45, 90], "last_width": 128},  # the coupled network
    "cbcn_resnet18_cifar": {"widths": [32, 64, 128, 256]},
    "react_resnet18_cifar": SMALL,
    "reactnet_a_cifar": {"width_mult": 0.25},
    "pcnn_resnet18_cifar": SMALL,
    "bonn_resnet18_cifar": SMALL,
}
SLOW = ("xnornet", "cbcn", "abcnet", "react", "pcnn", "bonn")  # -m slow; the others keep the suite near 10 minutes


# the two XNOR variants (~40 s each on 2 cores) run with `pytest -m slow`: the suite stays under ~10 minutes
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith(SLOW) else n for n in BASELINES_CIFAR]
)
def test_baseline_loss_goes_down_on_real_cifar(name, cifar_cache, tmp_path):
    """A short real run (256 real CIFAR-10 images, 5 epochs of 4 steps, Adam 5e-4, the quick profile's widths
    16-128): the training loss drops."""
    import csv

    from _helpers import tiny_config

    from harness.training import run_train

    cfg = tiny_config(
        model=name,
        epochs=5,
        train_subset=256,
        test_subset=100,
        opt="adam",
        lr=5e-4,
        weight_decay=0.0,
        sched="constant",
        model_kwargs=BASELINES_CIFAR[name],
    )
    m = run_train(cfg, cifar_cache, tmp_path / "run", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
    losses = [float(r["train/loss"]) for r in rows]
    assert losses[-1] < losses[0], losses
    assert 0.0 <= float(rows[-1]["binary/flip_ratio"]) < 0.5  # binary weight stats are logged
    assert m["cost/bops"] > 0 and m["cost/params_binary"] > 0  # cost figures travel with the run
    if name.startswith("binarynet"):  # BinaryNet keeps its latent weights in [-1, 1]
        state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
        convs = [k for k in state if k.startswith("layer") and k.endswith("conv1.weight")]
        assert convs and all(state[k].abs().max() <= 1.0 for k in convs)


# ---------------------------------------------------------------------------------------------------------------------
# unknown keyword arguments are errors (never silently swallowed)


@pytest.mark.parametrize("name", _our_models() + _bnas_models())
def test_every_model_refuses_an_unknown_keyword(name):
    from methods.registry import ModelKwargError

    with pytest.raises(ModelKwargError, match=rf"^model '{name}' does not take keyword 'not_a_kwarg'; it takes: ") as e:
        timm.create_model(name, not_a_kwarg=1)
    assert isinstance(e.value, TypeError) and e.value.model == name and e.value.key == "not_a_kwarg"
    assert "num_classes" in e.value.accepted and "pretrained_cfg" not in e.value.accepted


def test_bnas_refuses_a_typo_and_other_families_keywords():
    from methods.registry import ModelKwargError

    with pytest.raises(ModelKwargError, match=r"'bnas_a' does not take keyword 'skipp'.*did you mean skip\?$") as e:
        timm.create_model("bnas_a", skipp=False)
    assert {"skip", "layers", "init_channels", "genotype", "official_fp_tail"} <= set(e.value.accepted)
    # an XNOR-Net++ option, timm's drop-path rate and feature extraction: BNAS supports none of them
    for key, value in {"scale_shape": "channel", "drop_path_rate": 0.1, "features_only": True}.items():
        with pytest.raises(ModelKwargError, match=rf"model 'bnas_(a|d)' does not take keyword '{key}'"):
            timm.create_model("bnas_a", **{key: value})
        with pytest.raises(ModelKwargError, match=rf"model 'bnas_d' does not take keyword '{key}'"):
            timm.create_model("bnas_d", **{key: value})


def test_baselines_refuse_another_familys_keyword():
    from methods.registry import ModelKwargError

    with pytest.raises(ModelKwargError, match="'bireal_resnet18_cifar' does not take keyword 'scale_shape'"):
        timm.create_model("bireal_resnet18_cifar", scale_shape="full")
    with pytest.raises(
        ModelKwargError, match="'xnornetpp_resnet18_cifar' does not take keyword 'scale_shap'.*scale_shape"
    ):
        timm.create_model("xnornetpp_resnet18_cifar", scale_shap="full")
    with pytest.raises(ModelKwargError, match="'binarynet_resnet18_cifar' does not take keyword 'conv'"):
        timm.create_model("binarynet_resnet18_cifar", conv=print)  # set by the family, not by a caller


def test_supported_keywords_and_timm_plumbing_still_pass(tmp_path):
    m = timm.create_model(
        "bnas_a",
        layers=5,
        init_channels=8,
        skip=False,
        drop_rate=0.1,
        pretrained_cfg_overlay={"crop_pct": 1.0},
        cache_dir=tmp_path,
    )
    assert not any(c.has_skip for c in m.cells) and m.pretrained_cfg["crop_pct"] == 1.0
    m = timm.create_model(
        "xnornetpp_resnet18_cifar", weight_binary=False, scale_shape="factorised", widths=(8, 8, 8, 8)
    )
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    small = {"widths": (8, 8, 8, 8)}
    for name, kw in {
        "binarynet_resnet18_cifar": {"pad_value": 1.0, "weight_binary": True, **small},
        "xnornet_resnet18_cifar": {"xnor_grad": "xnor_rescale", "xnor_center": True, "xnor_clamp": True, **small},
        "bireal_resnet18_cifar": {"weight_grad": "paper", "features_only": True, "out_indices": (0, 1, 2, 3), **small},
        "resnet18_cifar": {"drop_path_rate": 0.1, "features_only": True},
    }.items():
        assert isinstance(timm.create_model(name, **kw), torch.nn.Module)


def test_create_model_names_the_model_kwarg_and_what_it_takes():
    with pytest.raises(BnasError) as e:
        create_model("bnas_a", 10, skipp=False)
    msg = str(e.value)
    assert msg.startswith("model 'bnas_a' does not take keyword 'skipp' (train.model_kwargs); it takes: ")
    assert msg.endswith("; did you mean skip?") and "\n" not in msg
    assert "drop_rate, genotype, global_pool" in msg and "official_binary_res_weights, official_fp_tail, skip" in msg
    with pytest.raises(BnasError, match=r"^model 'bnas_a' does not take keyword 'scale_shape' \(train.model_kwargs\)"):
        create_model("bnas_a", 10, scale_shape="channel")
    with pytest.raises(BnasError, match=r"^model 'xnornetpp_resnet18_cifar' does not take keyword 'xnor_grad'"):
        create_model("xnornetpp_resnet18_cifar", 10, xnor_grad="exact")


# the ImageNet variants of the issue-18 and issue-19 families, once each, tiny, on the real Imagenette copy (1000 train
# images, 10 classes): 64 images at 64x64, one epoch, evaluated on 50 validation images
IMAGENET_SMOKE = {
    "abcnet_resnet18": {"widths": [8, 16, 32, 64]},
    "binaryduo_resnet18": {"widths": [8, 12, 23, 45], "last_width": 64},
    "cbcn_resnet18": {"widths": [16, 32, 64, 128]},
    "react_resnet18": {"widths": [8, 16, 32, 64]},
    "reactnet_a": {"width_mult": 0.125},
    "pcnn_resnet18": {"widths": [8, 16, 32, 64]},
    "bonn_resnet18": {"widths": [8, 16, 32, 64]},
    # the BNAS-D v2 Multi-Stage row's first stage: BNAS-D with real weights behind binary activations
    "bnas_d": {"layers": 3, "init_channels": 16, "weight_binary": False},
}


@pytest.fixture(scope="module")
def imagenette(data_root, tmp_path_factory):
    from harness.imagenet import prepare_imagenet

    out = tmp_path_factory.mktemp("imagenette")
    prepare_imagenet(data_root / "imagenette", out)
    return out


@pytest.mark.parametrize("name", list(IMAGENET_SMOKE))
def test_imagenet_families_train_once_on_imagenette(name, imagenette, tmp_path):
    from _helpers import tiny_config

    from harness.config import config_from_dict, config_to_dict
    from harness.training import run_train

    cfg = config_to_dict(
        tiny_config(
            model=name,
            num_classes=10,
            epochs=1,
            batch_size=16,
            opt="adam",
            lr=1e-3,
            weight_decay=0.0,
            sched="constant",
            model_kwargs=IMAGENET_SMOKE[name],
            train_subset=64,
            test_subset=50,
        )
    )
    cfg["data"].update(image_size=64, val_resize=73, num_workers=0)
    m = run_train(config_from_dict(cfg), imagenette, tmp_path / "run", progress=False)
    assert 0 < m["train/loss"] < 10 and 0 <= m["val/top1"] <= 100
    # binary activations with binary weights count as BOPs; with real weights (a first stage) as FLOPs
    assert (m["cost/bops"] > 0) == IMAGENET_SMOKE[name].get("weight_binary", True), m["cost/bops"]
