#!/bin/bash
# GPU device check for issue 6, session 2026-11-26 (2), second call: CUDA-graph search after the index fix.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
D=gpudata/cifar10
S=$(date +%s)
el() { echo "[t+$(( $(date +%s) - S ))s]"; }
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== pytest graph equivalence"; el
timeout 70 python3 -m pytest -q -p no:cacheprovider tests/methods/test_bnas_supernet.py -k graph 2>&1 | grep -v "^  File" | tail -12
echo "== real search 2 epochs on 6k+6k, graph (default)"; el
printf 'search: {epochs: 2, device: cuda}\ntracking: {enabled: false}\n' > /tmp/s.yaml
timeout 80 python3 -m harness.cli search --params /tmp/s.yaml --data $D --out /tmp/s 2>&1 | grep -v "^  File" | tail -4
cp /tmp/s/history.csv $OUT/search_history.csv; cp /tmp/s/metrics.json $OUT/search_metrics.json
python3 -c "import csv;[print({k:r[k] for k in r if k in ('epoch','train/loss','val/top1','perf/epoch_s')}) for r in csv.DictReader(open('/tmp/s/history.csv'))]"
echo "== bnas bench --device cuda"; el
timeout 190 python3 -m harness.cli bench --device cuda --data $D --out $OUT 2>&1 | grep -v "^  File" | tail -4
python3 -c "import json;d=json.load(open('$OUT/bench.json'))['cuda'];[print(k,v) for k,v in d.items() if k not in ('machine',)]"
el
} 2>&1 | tee $OUT/log.txt
