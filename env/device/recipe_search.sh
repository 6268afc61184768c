#!/usr/bin/env bash
# Issue 12, one device call on one GPU, from the repo root: where the budget recipe's BLEU is lost.
# A: the target recipe at A_SETS (trained alone on the card: its logged speed is the card's),
# checkpoints every 1,000 steps; then, while B (a larger-batch variant at B_SETS) trains beside
# them, A's checkpoints are sampled (DPM-Solver++ 20, first 200 valid pairs: BLEU against steps),
# and its last checkpoint decodes valid pairs 200-1199 (kept apart from the 200 that are reported,
# to choose sample.pad_penalty on) and the first 200 at each PAD penalty; then the same for B's
# last checkpoint. Every setting's outputs land in $OUT (tune_*, first200_*) for reading.
set -uo pipefail
source env/device/device_setup.sh
D=.device/data
python3 -c "
rows = open('$D/valid.jsonl').readlines()
open('/tmp/first200.jsonl', 'w').writelines(rows[:200]); open('/tmp/tune.jsonl', 'w').writelines(rows[200:1200])"
COMMON=(--set data.train=$D/train.jsonl --set data.valid=$D/valid.jsonl)
A_SETS=${A_SETS:-train.steps=4000,train.save_every=1000}
B_SETS=${B_SETS:-train.steps=2000,train.save_every=1000,train.batch_size=1024,train.micro_batch_size=1024,train.lr=1.4e-3,train.warmup_steps=150}
PENALTIES=${PENALTIES:-0 0.5 1 1.5 2 3 4 6}
settings() { for p in $PENALTIES; do echo "--setting p$p:solver=dpm++2m,steps=20,pad_penalty=$p"; done; }
sweep() {
  local v=$1 every=$2 ck last
  last=$(ls -d /tmp/abl/$v/checkpoints/step_* | tail -1)
  [ -n "$last" ] || return
  if [ "$every" = all ]; then
    for ck in /tmp/abl/$v/checkpoints/step_*; do
      run "steps_${v}_$(basename $ck)" 60 python3 env/device/solver_matrix.py $ck /tmp/first200.jsonl --pairs 200 \
        --setting dpm20:solver=dpm++2m,steps=20
    done
  fi
  run "tune_$v" 120 python3 env/device/solver_matrix.py $last /tmp/tune.jsonl --pairs 1000 --score 1000 \
    $(settings) --dump "$OUT/tune_$v"
  run "first200_$v" 90 python3 env/device/solver_matrix.py $last /tmp/first200.jsonl --pairs 200 \
    $(settings) --setting dpm50:solver=dpm++2m,steps=50 --setting unrounded:solver=dpm++2m,steps=20,clamp_step=100000 \
    --dump "$OUT/first200_$v"
}
run A ${A_S:-270} python3 env/device/ablation.py jobs/qqp_fast_target.yaml /tmp/abl "${COMMON[@]}" --variant "A:$A_SETS" --timeout ${A_S:-260}
cp /tmp/abl/A/train_log.jsonl "$OUT/train_log_A.jsonl" 2>/dev/null
( run B ${B_S:-230} python3 env/device/ablation.py jobs/qqp_fast_target.yaml /tmp/abl "${COMMON[@]}" --variant "B:$B_SETS" --timeout ${B_S:-220}
  cp /tmp/abl/B/train_log.jsonl "$OUT/train_log_B.jsonl" 2>/dev/null ) &
sweep A all
wait
sweep B last
