#!/usr/bin/env bash
# Issues 12 and 13, one device call on one GPU, from the repo root: (1) masked attention on this
# card, each SDPA backend and the model's masked path against fp32 (env/device/attention_check.py;
# ATTENTION=0 skips it); (2) the budget recipe through the pipeline for the noising modes in
# MODES (default target; env/quality_check.sh); (3) the target recipe with model.width_mask
# at WM_STEPS steps (env/device/ablation.py: trained, sampled as the recipe samples, diagnosed),
# after (2), or beside it with TOGETHER=1 (then both share the card: their step counts, not
# their speeds, are what is compared). Prints the tables last; every log in $OUT/all.tgz.
set -uo pipefail
source env/device/device_setup.sh
if [ "${ATTENTION:-1}" = 1 ]; then
  run attention 120 python3 env/device/attention_check.py
  grep -h '^{' "$OUT/attention.log"
fi
W=${WM_STEPS:-4000}
width_mask() {
  run width_mask ${WM_S:-200} python3 env/device/ablation.py jobs/qqp_fast_target.yaml /tmp/abl \
    --set data.train=.device/data/train.jsonl --set data.valid=.device/data/valid.jsonl \
    --variant "wm$W:model.width_mask=true,train.steps=$W,train.save_every=$W" --timeout $((${WM_S:-200} - 10))
  cp /tmp/abl/wm$W/train_log.jsonl "$OUT/train_log_wm$W.jsonl" 2>/dev/null
  cp /tmp/abl/ablation.md "$OUT/ablation.md" 2>/dev/null
}
quality() { MODES=${MODES:-target} bash env/quality_check.sh > "$OUT/quality_check.log" 2>&1; }
if [ "${TOGETHER:-0}" = 1 ]; then
  quality & width_mask; wait
else
  quality; width_mask
fi
(cd "$OUT" && tar czf all.tgz --exclude=all.tgz --exclude=runs.tgz --exclude=table.txt --exclude=ablation.md . && \
  find . -mindepth 1 -not -name all.tgz -not -name table.txt -not -name ablation.md -not -name runs.tgz -delete)
cat "$OUT/table.txt" "$OUT/ablation.md"
