#!/usr/bin/env bash
# Issues 12 and 13, one device call on one GPU, from the repo root: (1) masked attention on this
# card, each SDPA backend and the model's masked path against fp32 (env/device/attention_check.py);
# (2) the target budget recipe alone on the card through the pipeline (quality_check.sh with
# MODES=target: its train stage's wall time is the card's); (3) the recipe with model.width_mask
# at WM_STEPS steps, alone after it (env/device/ablation.py: trained, sampled as the recipe
# samples, diagnosed). Prints the tables last; every log in $OUT/all.tgz.
set -uo pipefail
source env/device/device_setup.sh
run attention 120 python3 env/device/attention_check.py
grep -h '^{' "$OUT/attention.log"
MODES=target TARGET_S=${TARGET_S:-380} bash env/device/quality_check.sh > "$OUT/quality_check.log" 2>&1
W=${WM_STEPS:-4000}
run width_mask ${WM_S:-200} python3 env/device/ablation.py jobs/qqp_fast_target.yaml /tmp/abl \
  --set data.train=.device/data/train.jsonl --set data.valid=.device/data/valid.jsonl \
  --variant "wm$W:model.width_mask=true,train.steps=$W,train.save_every=$W" --timeout $((${WM_S:-200} - 10))
cp /tmp/abl/wm$W/train_log.jsonl "$OUT/train_log_wm$W.jsonl" 2>/dev/null
cp /tmp/abl/ablation.md "$OUT/ablation.md" 2>/dev/null
(cd "$OUT" && tar czf all.tgz --exclude=all.tgz --exclude=runs.tgz --exclude=table.txt --exclude=ablation.md . && \
  find . -mindepth 1 -not -name all.tgz -not -name table.txt -not -name ablation.md -not -name runs.tgz -delete)
cat "$OUT/table.txt" "$OUT/ablation.md"
