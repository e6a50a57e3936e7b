"""harness.allocator: CPU runs keep freed memory in glibc's heap, so large activations stop page-faulting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_PROBE = """
import json, resource, torch
from harness.allocator import keep_freed_memory
on = keep_freed_memory()
faults = []
for _ in range(6):  # a training step's pattern: many 40 MB activations, then all freed
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ts = [torch.ones(10 * 2**20) for _ in range(8)]
    del ts
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
print(json.dumps({"on": on, "faults": faults}))
"""


def _probe(flag: str) -> dict:
    env = dict(os.environ, BNAS_KEEP_FREED_MEMORY=flag)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_kept_memory_stops_the_page_faults_of_large_activations():
    on, off = _probe("1"), _probe("0")
    assert on["on"] is True and off["on"] is False
    pages = 8 * 40 * 2**20 // 4096  # 81920 4-KiB pages per round
    assert min(off["faults"][1:]) > pages // 2  # glibc mmaps and unmaps every 40 MB block: faults every round
    assert max(on["faults"][-2:]) < pages // 50  # reused from the heap once it has grown (first rounds)
    assert sum(on["faults"]) < sum(off["faults"]) // 2
