#!/usr/bin/env bash
# Issue 12, one device call on one GPU, from the repo root: variants of the target budget recipe
# trained side by side (the card shared: the same steps, not the same speed), each last checkpoint
# scored on the first 200 valid pairs by env/device/ablation.py, then decoded again with each
# setting of DECODE (env/device/solver_matrix.py; DECODE= skips it). VARIANTS holds ablation.py's
# NAME:KEY=VALUE,... words; by default the stabiliser with each half removed (post-LN; beta2 0.999).
# PARALLEL=1 trains them one after another, each alone on the card: then their logged speeds are
# the card's (training only: nothing samples beside it, as the pipeline's sample stage does on one
# GPU). Every train log comes back, to look for loss spikes. Needs .device/wheels and .device/data
# (env/device/device_setup.sh).
set -uo pipefail
source env/device/device_setup.sh
D=.device/data
VARIANTS=${VARIANTS:-"post_ln:model.norm=post beta2_0999:train.adam_beta2=0.999"}
args=(); names=(); for v in $VARIANTS; do args+=(--variant "$v"); names+=("${v%%:*}"); done
run ablation ${TRAIN_S:-540} python3 env/device/ablation.py jobs/qqp_fast_target.yaml /tmp/abl \
  --set data.train=$D/train.jsonl --set data.valid=$D/valid.jsonl --parallel ${PARALLEL:-${#names[@]}} "${args[@]}" \
  --timeout $((${TRAIN_S:-540} - 10))
for v in "${names[@]}"; do cp /tmp/abl/$v/train_log.jsonl "$OUT/train_log_$v.jsonl" 2>/dev/null; done
if [ -n "$DECODE" ]; then
  for v in "${names[@]}"; do decode_last $v $v ${DECODE_S:-45} /tmp/abl/$v/checkpoints & done; wait
fi
sed -n '/^| /p' "$OUT/ablation.log"
for v in "${names[@]}"; do sed -n '/^| /p' "$OUT/decode_$v.log" 2>/dev/null; done
