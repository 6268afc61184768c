#!/usr/bin/env bash
# Issue 5 follow-up, one device call on 1 GPU from the repo root: diffusion.bench at today's
# defaults, then with Inductor's autotuned GEMM templates (epilogues fused into the matmuls) for
# sampling and for training, then the real trainer (diffusion.train on QQP) for STEPS steps to
# compare its logged tokens/s with the benchmark's. Needs .device/wheels and .device/data (carried).
# Every result line is appended to $OUT as it comes, so a call cut short still returns figures.
set -uo pipefail
source env/device/device_setup.sh
AUTOTUNE='{"max_autotune": true, "coordinate_descent_tuning": true}'
run default 150 python3 -m diffusion.bench
run autotune_sample 170 python3 -m diffusion.bench --skip-train --inductor "$AUTOTUNE"
run autotune_train 200 python3 -m diffusion.bench --skip-sample --inductor "$AUTOTUNE"
W=/tmp/w; mkdir -p $W
printf 'data: {train: .device/data/train.jsonl, valid: .device/data/valid.jsonl}\ntrain: {log_every: 10, save_every: 100000}\n' > $W/qqp.yaml
python3 -c "from diffusion.prepare import prepare; from diffusion.config import load_config; print(prepare(load_config('$W/qqp.yaml').data, '$W/data'))"
run trainer ${TRAINER_S:-150} python3 -m diffusion.train $W/qqp.yaml $W/run --data-dir $W/data --stop-after ${STEPS:-200}
cp $W/run/train_log.jsonl "$OUT/trainer_log.jsonl" 2>/dev/null || true
