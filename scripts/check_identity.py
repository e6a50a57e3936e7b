"""The no-behaviour-change check of a refactor: every non-timing number of a pipeline's run folders (metrics.json
without perf/*, history.csv without perf/* columns, every genotype and alphas JSON) in the working tree against the
same files at a git revision. Renamed history columns are mapped (RENAMED).

Usage, after `dvc repro` on the refactored code (exit 1 and one DIFF line per difference when they differ; files that
did not exist at REVISION, e.g. the runs of new rows, are listed as NEW and not compared):

    python scripts/check_identity.py REVISION [runs/cifar10]
"""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

REV = sys.argv[1]
ROOT = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("runs/cifar10")
RENAMED = {"search/val_loss": "search/arch_loss", "search/val_top1": "search/arch_top1"}  # per-epoch history columns


def old(path):
    r = subprocess.run(["git", "show", f"{REV}:{path}"], capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


def rows(text):
    return list(csv.DictReader(io.StringIO(text)))


bad, new, n_files, n_values = [], [], 0, 0
for f in sorted(ROOT.rglob("*")):
    if not f.is_file() or f.suffix not in (".json", ".csv"):
        continue
    before = old(f.as_posix())
    if before is None:
        new.append(str(f))
        continue
    n_files += 1
    if f.suffix == ".csv":
        a, b = rows(before), rows(f.read_text())
        if len(a) != len(b):
            bad.append(f"{f}: {len(a)} rows -> {len(b)}")
            continue
        for i, (ra, rb) in enumerate(zip(a, b, strict=True)):
            ra = {RENAMED.get(k, k): v for k, v in ra.items()}
            for k in set(ra) | set(rb):
                if k.startswith("perf/"):
                    continue
                n_values += 1
                if ra.get(k) != rb.get(k):
                    bad.append(f"{f} row {i} {k}: {ra.get(k)} -> {rb.get(k)}")
    else:
        a, b = json.loads(before), json.loads(f.read_text())
        if f.name == "metrics.json":
            a = {k: v for k, v in a.items() if not k.startswith("perf/")}
            b = {k: v for k, v in b.items() if not k.startswith("perf/")}
        n_values += len(a) if isinstance(a, dict) else 1
        if a != b:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)) if isinstance(a, dict) else ["*"]
            bad.append(f"{f}: differs in {keys[:8]}")
print(f"{n_files} files, {n_values} values compared against {REV}; {len(new)} new files not compared")
for line in new:
    print("NEW", line)
for line in bad:
    print("DIFF", line)
sys.exit(1 if bad else 0)
