#!/bin/bash
# GPU device check for issue 6, session 2026-11-26 (2): CUDA-graph search. Order = priority; every step has a timeout
# and the whole script stays under ~460 s.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
D=gpudata/cifar10
S=$(date +%s)
el() { echo "[t+$(( $(date +%s) - S ))s]"; }
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch,timm;print('torch',torch.__version__,'timm',timm.__version__)"
echo "== pytest graph equivalence"; el
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/methods/test_bnas_supernet.py -k graph 2>&1 | tail -15
echo "== search iteration graph bf16 (paper config)"; el
timeout 60 python3 -m harness.bench search '{"impl":"shared","batch":64,"layers":8,"channels":16,"repeats":20,"device":"cuda","data":"gpudata/cifar10","eval_batch":256}' 2>&1 | tail -2
echo "== bnas bench --device cuda"; el
timeout 240 python3 -m harness.cli bench --device cuda --data $D --out $OUT 2>&1 | tail -4
echo "== real search 3 epochs on 6k+6k, graph (default)"; el
printf 'search: {epochs: 3, device: cuda}\ntracking: {enabled: false}\n' > /tmp/s.yaml
timeout 100 python3 -m harness.cli search --params /tmp/s.yaml --data $D --out /tmp/s 2>&1 | tail -3
cp /tmp/s/history.csv $OUT/search_history.csv; cp /tmp/s/metrics.json $OUT/search_metrics.json
cut -d, -f1-12 /tmp/s/history.csv 2>/dev/null | head -5
el
R=$(( 440 - ($(date +%s) - S) ))
if [ $R -gt 120 ]; then
  echo "== train BNAS-A compiled, 4 epochs on 12k (limit ${R}s)"
  printf 'train: {model: bnas_a, epochs: 4, batch_size: 256, lr: 0.005, weight_decay: 3.0e-6, sched: onecycle, drop_path: 0.2, device: cuda, opt: momentum, compile: true}\ntracking: {enabled: false}\n' > /tmp/t.yaml
  timeout $R python3 -m harness.cli train --params /tmp/t.yaml --data $D --out /tmp/t 2>&1 | tail -3
  cp /tmp/t/history.csv $OUT/train_history.csv; cp /tmp/t/metrics.json $OUT/train_metrics.json
fi
el
} 2>&1 | tee $OUT/log.txt
