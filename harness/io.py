"""File helpers: atomic writes (a temporary file in the same folder, then a rename over the target) and reading a
run's history.csv."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from harness.errors import DataError

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "read_history"]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            _write_sync(f, text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _write_sync(f: IO[str], text: str) -> None:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def _is_number(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        float(v)
    except ValueError:
        return False
    return True


def read_history(path: str | Path) -> dict[int, dict[str, float]]:
    """The numeric columns of a history.csv, by epoch (a resumed run may repeat an epoch: its last row wins).

    Raises:
        DataError: the file cannot be read.
    """
    out: dict[int, dict[str, float]] = {}
    try:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                row = {k: float(v) for k, v in r.items() if k and _is_number(v)}
                if "epoch" in row:
                    out[int(row["epoch"])] = row
    except OSError as e:
        raise DataError(f"{path}: unreadable history ({e})") from None
    return dict(sorted(out.items()))
