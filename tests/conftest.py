"""Shared fixtures: the real CIFAR-10 / ImageNet copies (BNAS_DATA or ../shared/data) and a prepared CIFAR cache."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*SADeprecationWarning.*")

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    env = os.environ.get("BNAS_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Folder holding the real `cifar10/` class-folder tree and `imagenette/` (read-only)."""
    root = _data_root()
    if not (root / "cifar10" / "train").is_dir():
        msg = f"real data not found at {root}: set BNAS_DATA to a folder with cifar10/ and imagenette/"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return root


@pytest.fixture(scope="session")
def cifar_cache(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full real CIFAR-10 (60,000 images) prepared once per test session."""
    from harness.cifar10 import prepare_cifar10

    out = tmp_path_factory.mktemp("cifar10")
    prepare_cifar10(data_root, out, split_seed=0, search_train_fraction=0.5, download_root=out / "raw")
    return out


@pytest.fixture()
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real MLflow sqlite store in a temporary folder, set as MLFLOW_TRACKING_URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
