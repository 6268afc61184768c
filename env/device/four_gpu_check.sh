#!/usr/bin/env bash
# Issue 6 in one device call from the repo root, on every GPU the machine has (4 on
# nvidia-h200-x4; fewer works too):
#   1. diffusion.bench on 1 GPU, then N ranks under torchrun with ZeRO-2 and ZeRO-3 (BENCH=0 skips);
#   2. the train stage of jobs/qqp_target.yaml as the pipeline starts it on a cluster (N ranks by
#      torchrun on one node), SIGKILLed once checkpoint KILL_AFTER is complete, started again (it
#      resumes and stops itself at TIME_LIMIT s with a checkpoint), then checkpoint KILL_AFTER
#      sampled on one GPU (env/device/train_kill_resume.py).
# Needs .device/wheels and .device/data (carried). Results go to $OUT as they come.
set -uo pipefail
source env/device/device_setup.sh
if [ "${BENCH:-1}" = 1 ]; then
  run bench_1gpu 150 env CUDA_VISIBLE_DEVICES=0 python3 -m diffusion.bench --skip-sample
  if [ "$NGPU" -ge 2 ]; then
    run bench_zero2 180 torchrun --standalone --nproc_per_node "$NGPU" -m diffusion.bench --skip-sample --zero-stage 2
    run bench_zero3 150 torchrun --standalone --nproc_per_node "$NGPU" -m diffusion.bench --skip-sample --zero-stage 3
  fi
fi
run kill_resume ${KILL_RESUME_S:-420} python3 env/device/train_kill_resume.py jobs/qqp_target.yaml /tmp/runs \
  --kill-after ${KILL_AFTER:-100} --set data.train=.device/data/train.jsonl --set data.valid=.device/data/valid.jsonl \
  --set resources.train.gpus=$NGPU --set train.save_every=${KILL_AFTER:-100} --set train.log_every=10 \
  --set train.time_limit_s=${TIME_LIMIT:-200} --set sample.max_examples=512
cp /tmp/runs/qqp-target/train_log.jsonl "$OUT/" 2>/dev/null
tail -60 /tmp/runs/qqp-target/logs/train.log > "$OUT/train_log_tail.txt" 2>/dev/null
ls -la /tmp/runs/qqp-target/checkpoints /tmp/runs/qqp-target/samples > "$OUT/folders.txt" 2>&1
cp /tmp/runs/qqp-target/logs/sample-*.log "$OUT/" 2>/dev/null
true
