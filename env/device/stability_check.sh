#!/usr/bin/env bash
# Issue 12, one device call on one GPU, from the repo root: which half of the budget recipe's
# stabiliser does the work. The target recipe (pre-LN, Adam beta2 0.95) with each half removed
# in turn, trained side by side (the card shared: the same steps, not the same speed), each last
# checkpoint scored on the first 200 valid pairs by env/device/ablation.py; every train log comes
# back, to look for loss spikes. Needs .device/wheels and .device/data (env/device/device_setup.sh).
set -uo pipefail
source env/device/device_setup.sh
D=.device/data
run ablation ${TRAIN_S:-490} python3 env/device/ablation.py jobs/qqp_fast_target.yaml /tmp/abl \
  --set data.train=$D/train.jsonl --set data.valid=$D/valid.jsonl --parallel 2 \
  --variant "post_ln:model.norm=post" --variant "beta2_0999:train.adam_beta2=0.999" --timeout $((${TRAIN_S:-490} - 10))
for v in post_ln beta2_0999; do cp /tmp/abl/$v/train_log.jsonl "$OUT/train_log_$v.jsonl" 2>/dev/null; done
tail -12 "$OUT/ablation.log"
