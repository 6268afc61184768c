#!/usr/bin/env bash
# Issue 13 in one device call on one GPU, from the repo root: trains the budget recipe for target
# noising (jobs/qqp_fast_target.yaml, 3000 steps, through env/device/ablation.py: its DDPM T = 2000
# sample of the first 200 valid pairs, scores and diagnostics), then env/device/solver_matrix.py on its
# last checkpoint: each solver over QQP's 2,048 valid pairs (speed; quality on the first 200,
# single sample), trimmed and untrimmed, and MBR-10 of the whole valid split end to end.
# Needs .device/wheels and .device/data (carried; see env/device/device_setup.sh). diffusion/QUALITY.md
# and diffusion/BENCHMARKS.md hold what it printed. EXTRA="--set KEY=VALUE ..." changes the recipe
# (e.g. tiny, for a dry run on a CPU).
set -uo pipefail
source env/device/device_setup.sh
A=/tmp/ablation
run budget_target ${TRAIN_S:-360} python3 env/device/ablation.py jobs/qqp_fast_target.yaml $A --variant budget \
  --set data.train=.device/data/train.jsonl --set data.valid=.device/data/valid.jsonl --examples 200 \
  --timeout $((${TRAIN_S:-360} - 10)) ${EXTRA:-}
cp $A/budget/train_log.jsonl "$OUT/train_log_target.jsonl" 2>/dev/null
CHECKPOINT=$(ls -d $A/budget/checkpoints/step_* | tail -1)
run solvers ${SOLVER_S:-240} python3 env/device/solver_matrix.py $CHECKPOINT $(ls $A/data-*/valid.jsonl | head -1) \
  --pairs 2048 --score 200 --mbr-seeds 10 --mbr-setting dpm20 \
  --setting ddpm2000:solver=ddpm,pairs=512 --setting ddpm2000_l2:solver=ddpm,rounding=l2,pairs=200 \
  --setting ddim20:solver=ddim,steps=20 --setting ddim50:solver=ddim,steps=50 \
  --setting dpm10:solver=dpm++2m,steps=10 --setting dpm20:solver=dpm++2m,steps=20 \
  --setting dpm20_untrimmed:solver=dpm++2m,steps=20,trim=0 --setting ddim20_untrimmed:solver=ddim,steps=20,trim=0 \
  --setting dpm20_noround:solver=dpm++2m,steps=20,clamp_step=2000 --setting ddim20_noround:solver=ddim,steps=20,clamp_step=2000 \
  --setting dpm50:solver=dpm++2m,steps=50 --setting ddpm200:solver=ddpm,steps=200
grep -h '"setting"' "$OUT/solvers.log" | python3 -c "
import json, sys
print('| setting | pairs | sent/s | BLEU | ROUGE-L | Dist-1 | len | BLEU vs source | empty |')
for line in sys.stdin:
    r = json.loads(line)
    speed = r.get('sentences_per_s') or f\"{r['seconds_end_to_end']} s end to end\"
    print(f\"| {r['setting']} | {r['pairs']} | {speed} | {r['bleu']:.4f} | {r['rouge_l']:.4f} | {r['dist1']:.4f} | {r['len']:.2f} | {r['self_bleu_src']:.4f} | {r['empty']:.3f} |\")
" | tee "$OUT/solvers.md"
