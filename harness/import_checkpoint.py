"""`bnas import-checkpoint`: a checkpoint of the official BNAS release (gistvision/bnas) as a run folder of this
harness (config.yaml, model.pt, import.json), so that `bnas evaluate` checks a released number under our protocol
without retraining.

The release's networks (src/model.py `NetworkCIFAR`, src/model_imagenet.py `NetworkImageNet`) hold the same tensors as
ours under other names; the map is a renaming (derived by reading that code; tests/fixtures holds the key lists it
produces):

| release | ours |
|---|---|
| `stem.bn.*`, `stem.op.0.*` (CIFAR stem: BN, conv) | `stem.0.*`, `stem.1.*` |
| `cells.i.preprocessK_red.*` (ImageNet reduction cells) | `cells.i.preprocessK.*` |
| `cells.i.preprocessK.op.0.*` | `cells.i.preprocessK.conv.*` |
| `cells.i._ops.J.bn.*`, `cells.i._ops.J.op.0.*` | `cells.i.ops.J.bn.*`, `cells.i.ops.J.conv.*` |

`stem0.*`, `stem1.*` (ImageNet), `cells.i.preprocess_res.*` and `classifier.*` keep their names. A `module.` prefix
(DataParallel/DDP, as the release's README commands train) is removed, and an ImageNet `checkpoint.pth.tar` is read
through its `state_dict` entry. The release stores the latent weights after its in-place centring and clamping, which
our XNOR quantizer repeats at evaluation; its binarisation leaves the last two convs real (the BinOp count quirk,
`official_fp_tail`), so the import keeps that switch on by default: those weights were trained real.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from harness.checkpoint import load_state, load_tensors, save_tensors
from harness.config import config_from_dict, save_config
from harness.errors import CheckpointError, ConfigError
from harness.models import create_model

__all__ = ["RELEASE_MODELS", "release_to_ours", "release_state_dict", "import_checkpoint"]

# the release's networks: our model and its dataset's classes
RELEASE_MODELS = {"bnas_a": 10, **{f"bnas_{v}": 1000 for v in "defgh"}}

_RENAMES = (
    (re.compile(r"^stem\.bn\."), "stem.0."),
    (re.compile(r"^stem\.op\.0\."), "stem.1."),
    (re.compile(r"\.preprocess([01])_red\."), r".preprocess\1."),
    (re.compile(r"\.preprocess([01])\.op\.0\."), r".preprocess\1.conv."),
    (re.compile(r"\._ops\.(\d+)\.op\.0\."), r".ops.\1.conv."),
    (re.compile(r"\._ops\.(\d+)\.bn\."), r".ops.\1.bn."),
)


def release_to_ours(key: str) -> str:
    """Our state-dict key for a key of the release's networks (module docstring)."""
    key = key.removeprefix("module.")
    for pattern, repl in _RENAMES:
        key = pattern.sub(repl, key)
    return key


def release_state_dict(obj: Any, source: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded release checkpoint: a bare state dict (CIFAR `weights.pt`) or a dict with a
    `state_dict` entry (ImageNet `checkpoint.pth.tar`).

    Raises:
        CheckpointError: neither form.
    """
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{source}: not a BNAS release checkpoint (expected a state dict of tensors, or a dict with 'state_dict')"
        )
    return obj


def _mapped(state: dict[str, torch.Tensor], model: torch.nn.Module, source: str | Path) -> dict[str, torch.Tensor]:
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = release_to_ours(key)
        if new not in ours:
            raise CheckpointError(
                f"{source}: unknown key '{key}' (ours: '{new}'): not a tensor of {type(model).__name__}"
            )
        if tuple(value.shape) != tuple(ours[new].shape):
            raise CheckpointError(
                f"{source}: key '{key}' has shape {tuple(value.shape)}; expected {tuple(ours[new].shape)} (another "
                f"network size? pass the release's model)"
            )
        out[new] = value
    missing = [k for k in ours if k not in out]
    if missing:
        raise CheckpointError(f"{source}: {len(missing)} tensors missing, e.g. ours '{missing[0]}'")
    return out


def import_checkpoint(
    source: str | Path, model_name: str, out: str | Path, *, official_fp_tail: bool = True
) -> dict[str, Any]:
    """Write the release checkpoint `source` of network `model_name` (bnas_a, bnas_d ... bnas_h) as the run folder
    `out` (config.yaml, model.pt, import.json), all or nothing. Returns the import record.

    Raises:
        ConfigError: an unknown model, or `out` exists and is not empty.
        CheckpointError: the file is missing or corrupt, or a key is unknown, missing or of another shape.
    """
    if model_name not in RELEASE_MODELS:
        raise ConfigError(
            f"--model: unknown release network '{model_name}'; expected one of {', '.join(RELEASE_MODELS)}"
        )
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: exists and is not empty")
    obj = load_tensors(source, what="a checkpoint of the official BNAS release (weights.pt or checkpoint.pth.tar)")
    kwargs = {"official_fp_tail": True} if official_fp_tail else {}
    num_classes = RELEASE_MODELS[model_name]
    model = create_model(model_name, num_classes, **kwargs)
    state = _mapped(release_state_dict(obj, source), model, source)
    load_state(model, state, source)
    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    record = {"source": str(source), "sha256": digest, "model": model_name, "tensors": len(state), **kwargs}
    cfg = config_from_dict({"train": {"model": model_name, "num_classes": num_classes, "model_kwargs": kwargs}})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_config(cfg, tmp / "config.yaml")
        save_tensors(model.state_dict(), tmp / "model.pt")
        (tmp / "import.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record
