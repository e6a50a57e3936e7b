#!/bin/bash
# second device check: does BNAS-A training diverge because of bf16? Same 2-epoch run at lr 0.005 with and without
# autocast; and one fp32 search epoch (real loop) to compare with the bf16 one.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
D=gpudata/cifar10
{
for amp in true false; do
echo "== train amp=$amp"; date +%T
printf "train: {model: bnas_a, epochs: 2, batch_size: 256, lr: 0.005, weight_decay: 3.0e-6, sched: onecycle, drop_path: 0.2, device: cuda, opt: momentum, amp: $amp}\ntracking: {enabled: false}\n" > /tmp/t.yaml
timeout 60 python3 -m harness.cli train --params /tmp/t.yaml --data $D --out /tmp/t$amp 2>&1 | grep -v "it/s" | tail -3
cp /tmp/t$amp/history.csv $OUT/train_amp_$amp.csv
done
echo "== search 1 epoch fp32"; date +%T
printf 'search: {epochs: 1, device: cuda, amp: false}\ntracking: {enabled: false}\n' > /tmp/s.yaml
timeout 70 python3 -m harness.cli search --params /tmp/s.yaml --data $D --out /tmp/s 2>&1 | grep -v "it/s" | tail -2
cp /tmp/s/history.csv $OUT/search_fp32.csv
date +%T
} 2>&1 | tee $OUT/log2.txt
