#!/bin/bash
# GPU device check (one call): bench, a real 2-epoch paper-config search and a real 2-epoch BNAS-A training
# on a 12k/2k stratified subset of the real CIFAR-10 cache, then compiled variants. Every step has its own timeout.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
D=gpudata/cifar10
L=$OUT/log.txt
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch,timm,click,yaml,scipy;print('torch',torch.__version__,'timm',timm.__version__,'cuda',torch.version.cuda)"
nproc
echo "== bench"; date +%T
timeout 200 python3 -m harness.cli bench --device cuda --data $D --out $OUT 2>&1 | tail -5
echo "== search 2 epochs (paper config: 8 cells, C 16, batch 64) on 6k+6k"; date +%T
printf 'search: {epochs: 2, device: cuda}\ntracking: {enabled: false}\n' > /tmp/s.yaml
timeout 150 python3 -m harness.cli search --params /tmp/s.yaml --data $D --out /tmp/s 2>&1 | tail -3
cp /tmp/s/history.csv $OUT/search_history.csv
echo "== train BNAS-A 2 epochs, recipe bnas_cifar_paper (batch 256) on 12k/2k"; date +%T
printf 'train: {model: bnas_a, epochs: 2, batch_size: 256, lr: 0.05, weight_decay: 3.0e-6, sched: onecycle, drop_path: 0.2, device: cuda, opt: momentum}\ntracking: {enabled: false}\n' > /tmp/t.yaml
timeout 120 python3 -m harness.cli train --params /tmp/t.yaml --data $D --out /tmp/t 2>&1 | tail -3
cp /tmp/t/history.csv $OUT/train_history.csv; cp /tmp/t/metrics.json $OUT/train_metrics.json
echo "== compiled BNAS-A training step"; date +%T
timeout 150 python3 -m harness.bench train '{"model":"bnas_a","batch":256,"repeats":10,"device":"cuda","data":"gpudata/cifar10","compile":true}' 2>&1 | tail -2
echo "== compiled search iteration"; date +%T
timeout 150 python3 -m harness.bench search '{"impl":"shared","batch":64,"layers":8,"channels":16,"repeats":5,"device":"cuda","data":"gpudata/cifar10","compile":true}' 2>&1 | tail -2
date +%T
} 2>&1 | tee $L
