"""harness/import_checkpoint.py: a state dict with the official BNAS release's names and shapes (tests/fixtures: the
key lists its model code produces, derived by reading and building gistvision/bnas) imports into our network, and the
imported run evaluates to the same logits as our own network holding the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from harness.checkpoint import load_tensors
from harness.cifar10 import CifarLoader, load_cifar10
from harness.config import load_config
from harness.errors import CheckpointError, ConfigError
from harness.import_checkpoint import import_checkpoint, release_to_ours
from harness.models import create_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _release_keys(model: str) -> list[tuple[str, tuple[int, ...], bool]]:
    """(key, shape, is_int) of the release's state_dict(), in its order."""
    rows = []
    for line in (FIXTURES / f"bnas_release_keys_{model}.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, rest = line.split(" ", 1)
        shape = tuple(int(d) for d in rest[rest.index("(") + 1 : rest.index(")")].replace(",", " ").split())
        rows.append((key, shape, "int64" in rest))
    return rows


def _release_state(model: str, prefix: str = "module.") -> dict[str, torch.Tensor]:
    """A release-layout state dict with random weights (as DataParallel saves it: `module.` keys)."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, shape, is_int in _release_keys(model):
        if is_int:
            value = torch.tensor(7)
        elif key.endswith("running_var"):
            value = torch.rand(shape, generator=g) + 0.5
        else:
            value = torch.randn(shape, generator=g) * 0.1
        state[prefix + key] = value
    return state


@pytest.mark.parametrize("model", ["bnas_a", "bnas_d"])
def test_every_release_key_maps_to_one_of_ours_with_its_shape(model):
    ours = {k: tuple(v.shape) for k, v in create_model(model, 10 if model == "bnas_a" else 1000).state_dict().items()}
    mapped = {release_to_ours(key): shape for key, shape, _ in _release_keys(model)}
    assert len(mapped) == len(_release_keys(model)) == len(ours)  # 474 (BNAS-A), 694 (BNAS-D): one to one
    assert mapped == ours


def test_bnas_a_registers_its_tensors_in_the_releases_order():
    """So position gives a correspondence that does not use the importer's map (the logits test relies on it; BNAS-D's
    reduction cells register their residual conv before the ops in the release, after them in ours)."""
    release = _release_keys("bnas_a")
    ours = create_model("bnas_a", 10).state_dict()
    assert [release_to_ours(k) for k, _, _ in release] == list(ours)


def test_import_then_evaluation_gives_our_networks_logits(cifar_cache, tmp_path):
    state = _release_state("bnas_a")
    src = tmp_path / "weights.pt"
    torch.save(state, src)
    record = import_checkpoint(src, "bnas_a", tmp_path / "run")
    assert record["tensors"] == 474 and record["official_fp_tail"] is True
    # our own network with the same weights, matched by position (not by the importer's map)
    ours = create_model("bnas_a", 10, official_fp_tail=True)
    ours.load_state_dict(dict(zip(ours.state_dict(), state.values(), strict=True)))
    cfg = load_config(tmp_path / "run" / "config.yaml")
    imported = create_model(cfg.train.model, cfg.train.num_classes, **cfg.train.model_kwargs)
    imported.load_state_dict(load_tensors(tmp_path / "run" / "model.pt", what="model.pt"))
    ds = load_cifar10(cifar_cache)
    x, _ = next(iter(CifarLoader(ds.train_x[:8], ds.train_y[:8], 8, train=False)))
    ours.eval(), imported.eval()
    with torch.no_grad():
        assert torch.equal(imported(x), ours(x))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml", "import.json", "model.pt"]


def test_an_imagenet_checkpoint_dict_imports(tmp_path):
    src = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 250, "state_dict": _release_state("bnas_d"), "best_acc_top1": 57.69}, src)
    assert import_checkpoint(src, "bnas_d", tmp_path / "run")["tensors"] == 694


def test_bad_checkpoints_are_one_clear_error_and_write_nothing(tmp_path):
    good = _release_state("bnas_a", prefix="")
    cases = {
        "unknown": ({**good, "cells.0.extra.weight": torch.zeros(1)}, r"unknown key 'cells.0.extra.weight'"),
        "missing": (
            {k: v for k, v in good.items() if k != "classifier.bias"},
            r"1 tensors missing, e.g. ours 'classifier.bias'",
        ),
        "shape": (
            {**good, "classifier.weight": torch.zeros(3, 3)},
            r"key 'classifier.weight' has shape \(3, 3\); expected \(10, 576\)",
        ),
    }
    for name, (state, match) in cases.items():
        src = tmp_path / f"{name}.pt"
        torch.save(state, src)
        with pytest.raises(CheckpointError, match=match):
            import_checkpoint(src, "bnas_a", tmp_path / name)
        assert not (tmp_path / name).exists()
    torch.save(good, tmp_path / "good.pt")
    with pytest.raises(ConfigError, match="unknown release network 'bnas_z'"):
        import_checkpoint(tmp_path / "good.pt", "bnas_z", tmp_path / "z")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        import_checkpoint(tmp_path / "good.pt", "bnas_a", tmp_path / "full")
    with pytest.raises(CheckpointError, match="not a BNAS release checkpoint"):
        torch.save([1, 2], tmp_path / "list.pt")
        import_checkpoint(tmp_path / "list.pt", "bnas_a", tmp_path / "l")


def test_the_cli_names_a_missing_file(tmp_path):
    from harness.cli import cli

    res = CliRunner().invoke(
        cli, ["import-checkpoint", str(tmp_path / "none.pt"), "--model", "bnas_a", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code != 0 and "none.pt: not found" in res.output and not (tmp_path / "o").exists()


def test_pretrained_true_points_to_the_import_command():
    import timm

    with pytest.raises(ValueError, match=r"bnas import-checkpoint FILE --model bnas_d --out DIR"):
        timm.create_model("bnas_d", pretrained=True)
